-- The reference orders table of the delivery platform (contract §4).  The
-- platform's HTTP side writes it; imd only reads it for T.  Table and column
-- names imd reads are configurable under [orders].
CREATE TABLE IF NOT EXISTS orders (
  id           BIGINT UNSIGNED NOT NULL,
  customer_id  BIGINT UNSIGNED NOT NULL,
  courier_id   BIGINT UNSIGNED NULL,
  status       VARCHAR(32)     NOT NULL DEFAULT 'new',
  PRIMARY KEY (id),
  KEY orders_by_courier (courier_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
