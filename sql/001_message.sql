-- One row per stored message (contract §5).  Written only by the migrator,
-- read by history (H).  Every statement is safe to run again.
--
-- msg_id is VARBINARY: ids compare byte for byte (no case folding, no
-- trailing-space padding), so two ids a client sees as different never
-- collide, and ORDER BY msg_id is the same order as Python's str order.
-- packet is the exact JSON that was delivered, replayed verbatim by H so the
-- id keeps the JSON type the client chose.
CREATE TABLE IF NOT EXISTS message (
  seq      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  msg_id   VARBINARY(256)  NOT NULL,
  from_id  BIGINT UNSIGNED NOT NULL,
  to_id    BIGINT UNSIGNED NOT NULL,
  type     CHAR(1)         NOT NULL,
  msg      TEXT            NOT NULL,
  ts       BIGINT          NOT NULL,
  packet   MEDIUMTEXT      NOT NULL,
  PRIMARY KEY (seq),
  UNIQUE KEY message_sender_id (from_id, msg_id),
  KEY message_by_recipient (to_id, ts, from_id, msg_id),
  KEY message_by_sender (from_id, ts, msg_id),
  KEY message_by_pair (from_id, to_id, ts, msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
