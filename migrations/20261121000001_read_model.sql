-- The PostgreSQL read model of the processor's state (see README "Query the read model").
--
-- The processor owns these tables: it applies this migration at start and upserts rows every
-- --sync-interval. Every row carries the changelog partition and offset that produced it
-- (source_partition, source_offset); an upsert only replaces a row with a newer one, so a
-- replay, a rebalance or a stale instance never moves a row backwards.
--
-- Migrations here are additive (new tables, new nullable columns, indexes built
-- CONCURRENTLY in their own migration), so a running processor never has to stop for one.
--
-- Keys are COLLATE "C" (byte order: cheaper to index than a locale's order, and ids have no
-- language). order_lines has no foreign key to orders: the sync writes an order and its lines
-- in one transaction, so no line is ever without its order, and a per-row foreign-key check
-- would halve the rate at which lines can be written.

-- One row per sku: the inventory store of sub-topology B.
CREATE TABLE inventory (
    sku              text        COLLATE "C" PRIMARY KEY,
    available        bigint      NOT NULL CHECK (available >= 0),
    reserved         bigint      NOT NULL,
    product_name     text,
    unit_price_cents bigint,
    updated_at       timestamptz NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    synced_at        timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE inventory IS 'Stock per sku, as the processor holds it (synced every --sync-interval).';
COMMENT ON COLUMN inventory.available IS 'Units that can still be reserved; never negative.';
COMMENT ON COLUMN inventory.reserved IS 'Units held by confirmed or pending orders.';
COMMENT ON COLUMN inventory.source_offset IS 'Offset in the inventory changelog partition that produced this row.';

-- One row per decided order: the orders store of sub-topology A (an order appears once it
-- is confirmed or rejected).
CREATE TABLE orders (
    order_id         text        COLLATE "C" PRIMARY KEY,
    customer_id      text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('CONFIRMED', 'REJECTED')),
    reason           text        CHECK (reason IN ('INSUFFICIENT_STOCK', 'UNKNOWN_SKU', 'INVALID_ORDER')),
    message          text,
    total_cents      bigint      NOT NULL,
    currency         text        NOT NULL,
    created_at       timestamptz NOT NULL,
    decided_at       timestamptz NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    synced_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'REJECTED') = (reason IS NOT NULL))
);

COMMENT ON TABLE orders IS 'Every order the processor has decided, and what it decided.';
COMMENT ON COLUMN orders.reason IS 'Why a REJECTED order was rejected; NULL otherwise.';
COMMENT ON COLUMN orders.source_offset IS 'Offset in the orders changelog partition that produced this row.';

-- The lines of each order, as ordered (they never change).
CREATE TABLE order_lines (
    order_id         text    COLLATE "C" NOT NULL,
    line_no          integer NOT NULL,
    sku              text    COLLATE "C" NOT NULL,
    quantity         integer NOT NULL,
    unit_price_cents bigint  NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

COMMENT ON TABLE order_lines IS 'The lines of each order in orders, numbered from 0.';

-- Sync bookkeeping: how far each task's state has reached PostgreSQL.
CREATE TABLE sync_progress (
    task             text        COLLATE "C" PRIMARY KEY,
    store            text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    synced_at        timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE sync_progress IS 'Per task (0_<p>: orders, 1_<p>: inventory): the changelog offset the read model has reached.';
