-- One round trip per append: lock the streams, check expected versions and
-- insert, inside one function call.
--
-- The advisory locks come before any write, so the transaction id (and so
-- the global positions) is only assigned once every earlier writer of these
-- streams has committed: see 10001_events.sql. Each statement of a volatile
-- function takes a fresh snapshot, so the version check after the locks
-- sees those writers' events.
--
-- p_expected: -1 any version, -2 no stream, n >= 0 exactly version n.
-- p_stream_idx: for each event, the 1-based index of its stream.
-- Answers one row per stream, in order; on a conflict only the first
-- conflicting stream, with its current version, and nothing is written.
CREATE FUNCTION append_events(
    p_streams text[],
    p_expected bigint[],
    p_stream_idx integer[],
    p_event_ids uuid[],
    p_types text[],
    p_schema_versions integer[],
    p_occurred timestamptz[],
    p_metadata jsonb[],
    p_data jsonb[]
) RETURNS TABLE (out_stream text, out_version bigint, out_position bigint, out_conflict boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s text;
    i integer;
    cur bigint;
    bases bigint[] := '{}';
BEGIN
    FOR s IN SELECT DISTINCT x FROM unnest(p_streams) AS x ORDER BY x LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(s, 0));
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        SELECT max(e.stream_version) INTO cur FROM events e WHERE e.stream_id = p_streams[i];
        IF (p_expected[i] = -2 AND cur IS NOT NULL) OR (p_expected[i] >= 0 AND cur IS DISTINCT FROM p_expected[i]) THEN
            RETURN QUERY SELECT p_streams[i], cur, NULL::bigint, true;
            RETURN;
        END IF;
        bases := array_append(bases, cur);
    END LOOP;
    RETURN QUERY
    WITH ins AS (
        INSERT INTO events (global_position, stream_id, stream_version, event_id, event_type, schema_version, occurred_at, metadata, data)
        SELECT (pg_current_xact_id()::text::bigint << 20) + t.n - 1,
               p_streams[t.idx],
               coalesce(bases[t.idx], -1) + row_number() OVER (PARTITION BY t.idx ORDER BY t.n),
               t.event_id, t.event_type, t.schema_version, t.occurred_at, t.metadata, t.data
        FROM unnest(p_stream_idx, p_event_ids, p_types, p_schema_versions, p_occurred, p_metadata, p_data)
             WITH ORDINALITY AS t(idx, event_id, event_type, schema_version, occurred_at, metadata, data, n)
        RETURNING events.stream_id, events.stream_version, events.global_position
    )
    SELECT st.s, coalesce(max(ins.stream_version), bases[st.i]), max(ins.global_position), false
    FROM unnest(p_streams) WITH ORDINALITY AS st(s, i)
    LEFT JOIN ins ON ins.stream_id = st.s
    GROUP BY st.s, st.i
    ORDER BY st.i;
END;
$$;
