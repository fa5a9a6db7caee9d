-- Core state applied from Thinkific events.
--
-- Every entity row carries the version of the event that produced it:
-- (source_rank, source_updated_at, source_event_created_at, source_event_id).
-- A write only lands when its version is greater than the stored one, so
-- duplicates and late, older deliveries change nothing and the final state
-- does not depend on arrival order. source_rank orders a full record
-- (rank 1, e.g. from user.updated) above a stub copied out of another
-- resource's payload (rank 0, e.g. the user embedded in an enrollment).

CREATE TABLE events (
    tenant_id        text        NOT NULL,
    event_id         text        COLLATE "C" NOT NULL,
    topic            text        NOT NULL,
    event_created_at timestamptz,
    received_at      timestamptz NOT NULL,
    applied_at       timestamptz NOT NULL DEFAULT now(),
    stream_entry_id  text        NOT NULL,
    handled          boolean     NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX events_topic_applied_at ON events (topic, applied_at);

CREATE TABLE courses (
    tenant_id               text        NOT NULL,
    course_id               bigint      NOT NULL,
    name                    text,
    slug                    text,
    deleted_at              timestamptz,
    source_rank             smallint    NOT NULL,
    source_updated_at       timestamptz NOT NULL,
    source_event_created_at timestamptz NOT NULL,
    source_event_id         text        COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant_id, course_id)
);

CREATE TABLE users (
    tenant_id               text        NOT NULL,
    user_id                 bigint      NOT NULL,
    email                   text,
    first_name              text,
    last_name               text,
    company                 text,
    roles                   jsonb,
    user_created_at         timestamptz,
    source_rank             smallint    NOT NULL,
    source_updated_at       timestamptz NOT NULL,
    source_event_created_at timestamptz NOT NULL,
    source_event_id         text        COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE enrollments (
    tenant_id               text             NOT NULL,
    enrollment_id           bigint           NOT NULL,
    user_id                 bigint           NOT NULL,
    course_id               bigint           NOT NULL,
    -- Always 0..=100, whatever scale the payload used.
    percentage_completed    double precision NOT NULL
        CHECK (percentage_completed >= 0 AND percentage_completed <= 100),
    started_at              timestamptz,
    activated_at            timestamptz,
    completed_at            timestamptz,
    expiry_date             timestamptz,
    free_trial              boolean          NOT NULL,
    enrollment_created_at   timestamptz,
    updated_at              timestamptz      NOT NULL,
    last_topic              text             NOT NULL,
    source_event_created_at timestamptz      NOT NULL,
    source_event_id         text             COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant_id, enrollment_id)
);
CREATE INDEX enrollments_course ON enrollments (tenant_id, course_id);

CREATE TABLE orders (
    tenant_id               text        NOT NULL,
    order_id                bigint      NOT NULL,
    order_number            text,
    status                  text,
    payment_type            text,
    amount_cents            bigint,
    billing_name            text,
    product_id              bigint,
    product_name            text,
    coupon                  jsonb,
    user_id                 bigint,
    items                   jsonb       NOT NULL,
    order_created_at        timestamptz,
    source_event_created_at timestamptz NOT NULL,
    source_event_id         text        COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant_id, order_id)
);
