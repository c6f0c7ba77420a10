-- Recall in rooms (contract v3 §11): a room's D is not a room message (it
-- takes no seq and H {"room"} does not list it) but it is in the members'
-- streams (§10), so it has a row of its own here, by its pos (accept_seq:
-- the accept order MQ:seq gave it, unique), copied by the migrator in the
-- same transaction that empties the recalled message's row in room_message
-- (msg '' and a packet with "msg": "" and "recalled": true): a replayed
-- batch is a no-op (INSERT IGNORE; the row is already empty).
CREATE TABLE IF NOT EXISTS room_recall (
  accept_seq  BIGINT UNSIGNED NOT NULL,
  room        VARCHAR(64)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  msg_id      VARBINARY(256)  NOT NULL,
  from_id     BIGINT UNSIGNED NOT NULL,
  recalled_id VARBINARY(256)  NOT NULL,
  ts          BIGINT UNSIGNED NOT NULL,
  packet      MEDIUMTEXT      NOT NULL,
  PRIMARY KEY (accept_seq),
  KEY room_recall_by_room (room, accept_seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
