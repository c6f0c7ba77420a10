-- History order (contract §3): by ts, then in the order the server accepted
-- the messages.  accept_seq is that order, taken in Redis (MQ:seq) by the
-- script that stores each message and copied here by the migrator, so the
-- order never depends on the order rows are inserted in.  Rows stored before
-- this version get their insertion order (seq).
--
-- The identity of a row becomes (from_id, msg_id, to_id): a user's packet
-- ids are theirs alone (one recipient each), but the system (from_id 0)
-- sends one event id to several recipients, e.g. an order's "closed" to
-- both parties.
--
-- Statements that find their change already made (a duplicate column or
-- key, a key already gone) are skipped by `imd-admin schema apply`, so a run
-- cut short part-way through this file is finished by the next one.
ALTER TABLE message ADD COLUMN accept_seq BIGINT UNSIGNED NOT NULL DEFAULT 0 AFTER ts;
UPDATE message SET accept_seq = seq WHERE accept_seq = 0;
ALTER TABLE message ADD UNIQUE KEY message_identity (from_id, msg_id, to_id);
ALTER TABLE message DROP INDEX message_sender_id;
ALTER TABLE message DROP INDEX message_by_recipient;
ALTER TABLE message DROP INDEX message_by_sender;
ALTER TABLE message DROP INDEX message_by_pair;
ALTER TABLE message ADD KEY message_by_recipient (to_id, ts, accept_seq);
ALTER TABLE message ADD KEY message_by_sender (from_id, ts, accept_seq);
ALTER TABLE message ADD KEY message_by_pair (from_id, to_id, ts, accept_seq);
