-- Retention ([retention] days, `imd-admin retention purge`) deletes room
-- messages and room recalls by age, oldest first, as it does messages
-- (sql/005): without a key on ts it would have to walk them in pos order,
-- and one row whose ts is ahead (a node's clock set wrong) would stop that
-- walk and keep every later row past its time.  ts grows with the accept
-- order, so new rows go in at the right-hand end of these keys.
--
-- On a large table InnoDB builds them in place without blocking inserts
-- (ALGORITHM=INPLACE, LOCK=NONE: the default for ADD KEY).
ALTER TABLE room_message ADD KEY room_message_by_ts (ts);
ALTER TABLE room_recall ADD KEY room_recall_by_ts (ts);
