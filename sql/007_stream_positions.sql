-- Sync (contract §10): a user's stream is every message it sent or
-- received, by position (pos = accept_seq, the accept order MQ:seq gave
-- it).  H {"sync": P} reads the rows with accept_seq > P on each side,
-- in accept_seq order, straight from these keys (no sort, no scan of the
-- user's older rows): received, by (to_id, accept_seq); sent, by
-- (from_id, accept_seq).  message_by_pos answers MAX(accept_seq) at once:
-- every ws and migrate process raises MQ:seq to it when it starts, so a
-- Redis restored from an older snapshot never hands a position out twice.
--
-- log_mark holds the highest accept_seq retention has removed ('purged'),
-- written in the purge's own transaction: a sync from below it answers
-- with "truncated": true.
--
-- On a large table InnoDB builds the keys in place without blocking
-- inserts (ALGORITHM=INPLACE, LOCK=NONE: the default for ADD KEY).
ALTER TABLE message ADD KEY message_recipient_pos (to_id, accept_seq);
ALTER TABLE message ADD KEY message_sender_pos (from_id, accept_seq);
ALTER TABLE message ADD KEY message_by_pos (accept_seq);
CREATE TABLE IF NOT EXISTS log_mark (
  name        VARCHAR(32)     NOT NULL,
  accept_seq  BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
