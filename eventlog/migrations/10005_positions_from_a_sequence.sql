-- Positions that are data, not the cluster's transaction ids, and a tail
-- that only appends in flight can hold back.
--
-- Until now a position was (writing transaction id << 20) + index, and a
-- reader read below the oldest running transaction (pg_snapshot_xmin). Both
-- broke under operations: a restore into another cluster restarts the
-- transaction ids below the stored positions (new writes sorted before old
-- ones), and any open transaction in the cluster, related or not, held
-- every reader back.
--
-- Now:
-- * Positions come from `events_position_seq`. An append takes one
--   contiguous range while holding its stream locks, so per-stream order is
--   position order. The sequence is dumped and restored with the data.
-- * An append in flight is visible to readers as a transaction-scoped
--   advisory lock (two-key form, first key in [2^30, 2^31)) whose key is
--   the first position of its range: a "marker". Markers live exactly as
--   long as the appending transaction; advisory locks are per database.
-- * Taking a range and locking its marker happen under the "gate"
--   (advisory key (-1, 1)), held exclusively by writers for those two steps
--   only and shared by readers while they look. So a reader that sees the
--   sequence at `hi` also sees the marker of every append below `hi` that
--   has not finished: the frontier (`events_frontier()`) is just below the
--   lowest marker, or `hi`. Everything at or below it is final (committed
--   or never to appear); a commit is visible before its locks are released.
-- * The gate is a session-level lock (released right after, not at
--   commit); it is taken and released inside a block whose handler
--   releases it, so errors, cancels and timeouts never leave it held.
--
-- Upgrading: stop every process of an older version before this migration
-- runs. An older writer fails (its append function is gone); an older
-- reader would read by the old rule and could pass over an append still
-- in flight.
--
-- Existing logs keep their positions; the sequence continues above them.
-- `first_in_append` (NULL for events appended before this migration, whose
-- append is still found from the transaction id in their position) names
-- the start of each append's range, so a consistency token finds the
-- streams its append wrote.

-- No append of the old scheme may be in flight or start while the
-- sequence is set above the old positions (the old append function is
-- dropped below, so an older writer fails from here on).
LOCK TABLE events IN EXCLUSIVE MODE;

CREATE SEQUENCE events_position_seq AS bigint MINVALUE 1;
SELECT setval('events_position_seq', max(global_position)) FROM events HAVING max(global_position) IS NOT NULL;

ALTER TABLE events ADD COLUMN first_in_append bigint;

-- Exact idempotency: an append whose events carry an idempotency key is
-- recorded under (actor, key) in the same transaction; a repeat within 24
-- hours appends nothing and answers the first append's result.
CREATE TABLE append_receipts (
    actor text NOT NULL,
    key text NOT NULL,
    result jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, key)
);
CREATE INDEX append_receipts_recorded_at ON append_receipts (recorded_at);

CREATE FUNCTION events_marker_key1(p bigint) RETURNS integer LANGUAGE sql IMMUTABLE AS
$$ SELECT (1073741824 | (p >> 32))::integer $$;
CREATE FUNCTION events_marker_key2(p bigint) RETURNS integer LANGUAGE sql IMMUTABLE AS
$$ SELECT (p & 4294967295)::bit(32)::integer $$;

-- The highest position below which every event is final.
CREATE FUNCTION events_frontier() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    hi bigint;
    called boolean;
    lowest bigint;
BEGIN
    -- Taken and released inside the guarded block: a cancel or timeout
    -- that lands anywhere in between still releases it (unlocking a gate
    -- not held only warns).
    BEGIN
        PERFORM pg_advisory_lock_shared(-1, 1);
        SELECT last_value, is_called INTO hi, called FROM events_position_seq;
        SELECT min(((l.classid::bigint & 1073741823) << 32) | l.objid::bigint) INTO lowest
          FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
           AND l.classid::bigint BETWEEN 1073741824 AND 2147483647
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
        PERFORM pg_advisory_unlock_shared(-1, 1);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock_shared(-1, 1);
        RAISE;
    END;
    IF NOT called THEN
        hi := hi - 1;
    END IF;
    RETURN least(hi, coalesce(lowest - 1, hi));
END;
$$;

-- Events after `p_after` up to the frontier, in position order. The
-- frontier is taken first; the events are read in a later snapshot, so
-- every append below it that committed is seen.
CREATE FUNCTION read_events(p_after bigint, p_limit integer) RETURNS SETOF events LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    frontier bigint := events_frontier();
BEGIN
    RETURN QUERY SELECT * FROM events e
     WHERE e.global_position > p_after AND e.global_position <= frontier
     ORDER BY e.global_position LIMIT p_limit;
END;
$$;

DROP FUNCTION append_events(text[], bigint[], integer[], uuid[], text[], integer[], timestamptz[], jsonb[], jsonb[]);

-- One round trip per append: take the receipt and stream locks, answer a
-- repeat from its receipt, check expected versions, take a range of
-- positions, insert, record the receipt.
--
-- p_expected: -1 any version, -2 no stream, n >= 0 exactly version n.
-- p_stream_idx: for each event, the 1-based index of its stream.
-- Answers one row per stream, in order; on a conflict only the first
-- conflicting stream, with its current version, and nothing is written.
-- out_replayed: the rows are the first append's under this receipt.
CREATE FUNCTION append_events(
    p_streams text[],
    p_expected bigint[],
    p_stream_idx integer[],
    p_event_ids uuid[],
    p_types text[],
    p_schema_versions integer[],
    p_occurred timestamptz[],
    p_metadata jsonb[],
    p_data jsonb[],
    p_actor text,
    p_key text
) RETURNS TABLE (out_stream text, out_version bigint, out_position bigint, out_conflict boolean, out_replayed boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s text;
    i integer;
    cur bigint;
    bases bigint[] := '{}';
    total integer := coalesce(array_length(p_event_ids, 1), 0);
    base bigint;
    receipt jsonb;
    acc jsonb := '[]';
BEGIN
    IF p_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('receipt:' || length(p_actor) || ':' || p_actor || p_key, 0));
        SELECT r.result INTO receipt FROM append_receipts r
         WHERE r.actor = p_actor AND r.key = p_key AND r.recorded_at > now() - interval '24 hours';
        IF receipt IS NOT NULL THEN
            RETURN QUERY SELECT x->>'stream', (x->>'version')::bigint, (x->>'position')::bigint, false, true
                           FROM jsonb_array_elements(receipt) AS x;
            RETURN;
        END IF;
    END IF;
    FOR s IN SELECT DISTINCT x FROM unnest(p_streams) AS x ORDER BY x LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(s, 0));
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        SELECT max(e.stream_version) INTO cur FROM events e WHERE e.stream_id = p_streams[i];
        IF (p_expected[i] = -2 AND cur IS NOT NULL) OR (p_expected[i] >= 0 AND cur IS DISTINCT FROM p_expected[i]) THEN
            RETURN QUERY SELECT p_streams[i], cur, NULL::bigint, true, false;
            RETURN;
        END IF;
        bases := array_append(bases, cur);
    END LOOP;
    IF total > 0 THEN
        BEGIN
            PERFORM pg_advisory_lock(-1, 1);
            base := nextval('events_position_seq');
            IF total > 1 THEN
                PERFORM setval('events_position_seq', base + total - 1);
            END IF;
            PERFORM pg_advisory_xact_lock(events_marker_key1(base), events_marker_key2(base));
            PERFORM pg_advisory_unlock(-1, 1);
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            PERFORM pg_advisory_unlock(-1, 1);
            RAISE;
        END;
    END IF;
    FOR out_stream, out_version, out_position IN
        WITH ins AS (
            INSERT INTO events (global_position, first_in_append, stream_id, stream_version, event_id, event_type, schema_version, occurred_at, metadata, data)
            SELECT base + t.n - 1, base,
                   p_streams[t.idx],
                   coalesce(bases[t.idx], -1) + row_number() OVER (PARTITION BY t.idx ORDER BY t.n),
                   t.event_id, t.event_type, t.schema_version, t.occurred_at, t.metadata, t.data
            FROM unnest(p_stream_idx, p_event_ids, p_types, p_schema_versions, p_occurred, p_metadata, p_data)
                 WITH ORDINALITY AS t(idx, event_id, event_type, schema_version, occurred_at, metadata, data, n)
            RETURNING events.stream_id, events.stream_version, events.global_position
        )
        SELECT st.s, coalesce(max(ins.stream_version), bases[st.i]), max(ins.global_position)
        FROM unnest(p_streams) WITH ORDINALITY AS st(s, i)
        LEFT JOIN ins ON ins.stream_id = st.s
        GROUP BY st.s, st.i
        ORDER BY st.i
    LOOP
        out_conflict := false;
        out_replayed := false;
        acc := acc || jsonb_build_array(jsonb_build_object('stream', out_stream, 'version', out_version, 'position', out_position));
        RETURN NEXT;
    END LOOP;
    IF p_key IS NOT NULL AND total > 0 THEN
        INSERT INTO append_receipts (actor, key, result) VALUES (p_actor, p_key, acc)
        ON CONFLICT (actor, key) DO UPDATE SET result = EXCLUDED.result, recorded_at = now();
    END IF;
END;
$$;
