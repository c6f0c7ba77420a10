-- Rooms (contract v3 §9).  A room's message is one row, whatever the
-- number of members, unique on (room, seq): the migrator's INSERT IGNORE
-- makes a replayed batch a no-op.  accept_seq is its pos (the accept order
-- MQ:seq gave it), so MQ:seq's floor at start-up counts room messages too.
-- packet is the message as delivered (with "seq" and "pos").
--
-- room_read holds each member's read cursor as the migrator last copied
-- it from MQ (forward only: GREATEST, so a replay or an older entry never
-- moves it back).  Members, meta and the close live in Redis (room:<room>),
-- durable like the messages still there.
CREATE TABLE IF NOT EXISTS room_message (
  room        VARCHAR(64)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  seq         BIGINT UNSIGNED NOT NULL,
  accept_seq  BIGINT UNSIGNED NOT NULL,
  msg_id      VARBINARY(256)  NOT NULL,
  from_id     BIGINT UNSIGNED NOT NULL,
  type        CHAR(1)         NOT NULL,
  msg         TEXT            NOT NULL,
  ts          BIGINT UNSIGNED NOT NULL,
  packet      MEDIUMTEXT      NOT NULL,
  PRIMARY KEY (room, seq),
  KEY room_message_by_pos (accept_seq),
  KEY room_message_sender (from_id, msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS room_read (
  room        VARCHAR(64)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  uid         BIGINT UNSIGNED NOT NULL,
  seq         BIGINT UNSIGNED NOT NULL,
  ts          BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (room, uid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
