-- What imd knows of each order's conversation (contract §7.3), kept in
-- imd's own database: the orders table ([orders] table) may be the
-- platform's, which imd only reads for T.  The Redis record (order:<order>)
-- expires 30 days after the conversation's end; this row does not, so a T
-- that comes later still finds the order taken or closed: it makes no
-- friendship again and stores no second "taken" (issue 22 item 5).
--
-- Written by imd only: at the first T (courier_id, friends_before,
-- taken_at) and at the close (closed_at, ends_at; courier_id NULL and
-- taken_at NULL for an order closed before any T).  Every write fills only
-- columns still NULL, so replays change nothing.  Times are Unix ms.
-- friends_before: "no", "friends" (kept after the order) or "order"
-- (another open order linked them), as in the Redis record.
CREATE TABLE IF NOT EXISTS order_conversation (
  order_id        BIGINT UNSIGNED NOT NULL,
  customer_id     BIGINT UNSIGNED NOT NULL,
  courier_id      BIGINT UNSIGNED NULL,
  friends_before  VARCHAR(16)     NULL,
  taken_at        BIGINT          NULL,
  closed_at       BIGINT          NULL,
  ends_at         BIGINT          NULL,
  PRIMARY KEY (order_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
