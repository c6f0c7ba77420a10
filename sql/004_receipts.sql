-- Receipts (contract §7.1): one row per (message, state reached), written
-- only by the migrator from the R entries of MQ, read by history (H) and by
-- the verification of receipts whose Redis dedup record has expired.
--
-- A message is identified as in `message` (from_id, msg_id, to_id): from_id
-- is the message's sender (0: the system), to_id its recipient, who sent the
-- receipt.  state: 1 delivered, 2 read; a message's state is the highest of
-- its rows (read implies delivered, and a read with no delivered before it
-- is a single row).  The primary key makes a replayed batch insert nothing
-- twice, with the same multi-row INSERT IGNORE as messages; no foreign key:
-- a receipt may commit in the other half of a batch before its message.
-- ts: when the receipt was accepted; accept_seq: its place in MQ (MQ:seq).
CREATE TABLE IF NOT EXISTS receipt (
  from_id     BIGINT UNSIGNED  NOT NULL,
  msg_id      VARBINARY(256)   NOT NULL,
  to_id       BIGINT UNSIGNED  NOT NULL,
  state       TINYINT UNSIGNED NOT NULL,
  ts          BIGINT           NOT NULL,
  accept_seq  BIGINT UNSIGNED  NOT NULL,
  PRIMARY KEY (from_id, msg_id, to_id, state)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
