-- The original design's message table, for bench/original/migrator.js: one
-- row per stored message, unique on (from_id, msg_id) so that a replayed
-- batch (or a message its client sent twice) is one row, and indexed for the
-- design's history query (a user's messages, sent and received, after a
-- time): by recipient and by sender.  bench/run.py applies it.
CREATE TABLE IF NOT EXISTS message (
  seq      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  msg_id   VARBINARY(64)   NOT NULL,
  from_id  BIGINT UNSIGNED NOT NULL,
  to_id    BIGINT UNSIGNED NOT NULL,
  type     CHAR(1)         NOT NULL,
  msg      TEXT            NOT NULL,
  ts       BIGINT          NOT NULL,
  PRIMARY KEY (seq),
  UNIQUE KEY message_sender_id (from_id, msg_id),
  KEY message_by_recipient (to_id, ts),
  KEY message_by_sender (from_id, ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
