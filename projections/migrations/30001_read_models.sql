-- Read models: built from the log, disposable, rebuilt at will.

-- How far each projection has applied the log, written in the same
-- transaction as its rows.
CREATE TABLE projection_checkpoints (
    projection text PRIMARY KEY,
    version integer NOT NULL,
    position bigint NOT NULL,
    state text NOT NULL DEFAULT 'running',
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Events a projection could not apply after bounded retries.
CREATE TABLE dead_letters (
    projection text NOT NULL,
    global_position bigint NOT NULL,
    stream_id text NOT NULL,
    event_type text NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, global_position)
);

CREATE TABLE rm_products (
    id uuid PRIMARY KEY,
    sku text NOT NULL,
    name text NOT NULL,
    description text NOT NULL,
    category text NOT NULL,
    price_minor bigint NOT NULL,
    currency text NOT NULL,
    stock bigint NOT NULL,
    status text NOT NULL,
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX rm_products_category ON rm_products (category, id);
CREATE INDEX rm_products_price ON rm_products (price_minor, id);

CREATE TABLE rm_customers (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    name text NOT NULL,
    shipping_address jsonb,
    status text NOT NULL,
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE rm_orders (
    id uuid PRIMARY KEY,
    customer_id uuid NOT NULL,
    status text NOT NULL,
    lines jsonb NOT NULL,
    total_minor bigint NOT NULL,
    currency text NOT NULL,
    shipping_address jsonb NOT NULL,
    placed_at timestamptz NOT NULL,
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX rm_orders_customer ON rm_orders (customer_id, id);
CREATE INDEX rm_orders_status ON rm_orders (status, id);

-- Revenue is recognised when an order is paid, and taken back when a paid
-- order is cancelled.
CREATE TABLE rm_sales_daily (
    day date NOT NULL,
    currency text NOT NULL,
    orders bigint NOT NULL,
    units bigint NOT NULL,
    revenue_minor bigint NOT NULL,
    PRIMARY KEY (day, currency)
);

CREATE TABLE rm_sales_by_product (
    day date NOT NULL,
    product_id uuid NOT NULL,
    currency text NOT NULL,
    units bigint NOT NULL,
    revenue_minor bigint NOT NULL,
    PRIMARY KEY (day, product_id, currency)
);

CREATE TABLE rm_audit (
    global_position bigint PRIMARY KEY,
    event_id uuid NOT NULL,
    stream_id text NOT NULL,
    stream_version bigint NOT NULL,
    event_type text NOT NULL,
    actor text NOT NULL,
    role text,
    correlation_id uuid NOT NULL,
    causation_id uuid,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX rm_audit_actor ON rm_audit (actor, global_position);
CREATE INDEX rm_audit_correlation ON rm_audit (correlation_id, global_position);
CREATE INDEX rm_audit_stream ON rm_audit (stream_id, global_position);
CREATE INDEX rm_audit_type ON rm_audit (event_type, global_position);
CREATE INDEX rm_audit_recorded ON rm_audit (recorded_at, global_position);

-- What the sales projection remembers of each order until it is paid.
CREATE TABLE rm_sales_orders (
    order_id uuid PRIMARY KEY,
    lines jsonb NOT NULL,
    paid_day date,
    currency text NOT NULL
);
