-- Recall, moderation delete and erasure (contract v3 §11): a recalled
-- message keeps its row (its place in history, its accept_seq) with its
-- text gone: msg '' and a packet whose "msg" is "" with "recalled": true.
-- The migrator sets it when it copies the D entry that recalls the message,
-- in the same transaction as that batch's rows (so a replay sets it again,
-- a no-op).
--
-- A statement that finds its change already made (a duplicate column) is
-- skipped by `imd-admin schema apply`.
ALTER TABLE message ADD COLUMN recalled TINYINT UNSIGNED NOT NULL DEFAULT 0 AFTER packet;
