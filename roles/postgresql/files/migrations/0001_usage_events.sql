-- The usage events the gateways write (one row per request), partitioned by UTC day so that
-- inserts and reports stay fast at tens of millions of rows and retention drops whole days.
-- Run by roles/postgresql (tasks/migrations.yml) as the schema's owner, in one transaction
-- with its row in citadel.schema_migrations. Privileges are the role's (tasks/database.yml).

CREATE TABLE citadel.usage_events (
    ts timestamptz NOT NULL,            -- when the request arrived
    event_id text NOT NULL,             -- unique per event: a replayed event inserts nothing twice
    request_id text NOT NULL,           -- the client's X-Request-Id, or the gateway's own
    key_name text,                      -- the API key's name (null: auth off or no valid key)
    requested_model text,               -- the model name the client sent ("auto", an alias, ...)
    model text,                         -- the model that served it
    endpoint text NOT NULL,             -- chat, completions, embeddings
    status smallint NOT NULL,
    prompt_tokens integer,              -- the upstream's usage (null: none reported)
    completion_tokens integer,
    latency_ms real NOT NULL,
    ttft_ms real,                       -- streams: time to the first relayed byte
    replica text,                       -- host:port of the last attempt
    attempts smallint NOT NULL,
    cut boolean NOT NULL,               -- a stream that broke after its first byte
    gateway text NOT NULL,              -- the gateway host that served it
    PRIMARY KEY (ts, event_id)
) PARTITION BY RANGE (ts);

CREATE INDEX usage_events_model_ts ON citadel.usage_events (model, ts);
CREATE INDEX usage_events_key_ts ON citadel.usage_events (key_name, ts);

-- One partition per UTC day from yesterday to ahead_days ahead; partitions of days older than
-- retention_days are dropped. Returns how many it created and dropped. SECURITY DEFINER: the
-- partitions belong to the schema's owner whoever runs it (the daily timer runs it as postgres).
CREATE FUNCTION citadel.usage_partitions(ahead_days integer, retention_days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = citadel, pg_catalog AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day date;
    part record;
    n integer := 0;
BEGIN
    IF ahead_days < 1 OR retention_days < 1 THEN
        RAISE EXCEPTION 'ahead_days and retention_days must be at least 1 (got %, %)', ahead_days, retention_days;
    END IF;
    FOR day IN SELECT d::date FROM generate_series(today - 1, today + ahead_days, interval '1 day') AS d LOOP
        IF to_regclass('citadel.usage_events_' || to_char(day, 'YYYYMMDD')) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE citadel.%I PARTITION OF citadel.usage_events FOR VALUES FROM (%L) TO (%L)',
                'usage_events_' || to_char(day, 'YYYYMMDD'),
                day::timestamp AT TIME ZONE 'UTC',
                (day + 1)::timestamp AT TIME ZONE 'UTC'
            );
            n := n + 1;
        END IF;
    END LOOP;
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'citadel.usage_events'::regclass
          AND c.relname ~ '^usage_events_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < today - retention_days
    LOOP
        EXECUTE format('DROP TABLE citadel.%I', part.relname);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION citadel.usage_partitions(integer, integer) FROM PUBLIC;
