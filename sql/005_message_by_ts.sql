-- Retention ([retention] days, `imd-admin retention purge`) deletes the
-- oldest rows in small batches, and `imd-admin reconcile` reads the rows of a
-- time window: both find them by ts.  Without this key each would read the
-- whole table by its primary key.  ts grows with the accept order, so new
-- rows go in at the right-hand end of the index, like the primary key's
-- (the cost on the migrator's inserts: docs/operations.md, "Retention").
--
-- On a large table InnoDB builds it in place without blocking inserts
-- (ALGORITHM=INPLACE, LOCK=NONE: the default for ADD KEY).
ALTER TABLE message ADD KEY message_by_ts (ts);
