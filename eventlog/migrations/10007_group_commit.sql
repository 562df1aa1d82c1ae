-- Group commit: many independent appends in one statement, so one
-- transaction, one pass through the position gate and one WAL flush serve
-- all of them (the append path's cost was per transaction, not per event).
--
-- Each append in the group is all-or-nothing and independent of the
-- others: it is replayed from its receipt, refused on its first
-- conflicting stream, or written whole. An append sees the streams as the
-- appends before it in the group left them, exactly as if they had
-- committed one after another. Anything that would fail the statement
-- itself (a duplicate event id, a value refused, two appends under one
-- receipt: cardinality_violation) fails the whole group; the caller then
-- runs each append alone, so such an error is reported to the append that
-- caused it and to no other.
--
-- Locks, in one order every writer follows (so groups running side by
-- side cannot deadlock): receipt locks by key, then stream locks by name,
-- then the gate, which is held only to take one range of positions for
-- the whole group and to lock its marker. One marker serves the group: its
-- events become visible together, at commit.
--
-- `append_events` (migration 10005) stays, for a process of the previous
-- version during a rolling upgrade; it takes the same locks in the same
-- order.
--
-- Arguments, all 1-based:
--   p_actor, p_key          per append (key NULL: no receipt)
--   p_w_append              per stream write: its append, non-decreasing
--   p_w_stream, p_w_expected per stream write (-1 any, -2 no stream, n >= 0)
--   p_e_write               per event: its write, non-decreasing
--   p_event_ids .. p_data   per event
-- Answers, per append in order: one row per write (its version and last
-- position after the append); on a conflict one row, the first conflicting
-- stream with its current version; when replayed, the receipt's rows.
CREATE FUNCTION append_batch(
    p_actor text[],
    p_key text[],
    p_w_append integer[],
    p_w_stream text[],
    p_w_expected bigint[],
    p_e_write integer[],
    p_event_ids uuid[],
    p_types text[],
    p_schema_versions integer[],
    p_occurred timestamptz[],
    p_metadata jsonb[],
    p_data jsonb[]
) RETURNS TABLE (out_append integer, out_stream text, out_version bigint, out_position bigint, out_conflict boolean, out_replayed boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n_app integer := coalesce(array_length(p_actor, 1), 0);
    n_w integer := coalesce(array_length(p_w_stream, 1), 0);
    n_e integer := coalesce(array_length(p_event_ids, 1), 0);
    k bigint;
    i integer;
    s text;
    receipt jsonb;
    a integer;
    w integer;
    w_lo integer;
    w_hi integer;
    ok boolean;
    idx integer;
    cur bigint;
    base bigint;
    taken bigint := 0;
    -- streams touched by the group and their versions as the group goes
    names text[];
    vers bigint[];
    -- per write: first event, number of events, version before, offset of
    -- its first event in the group's range (NULL: not written)
    w_first integer[] := array_fill(0, ARRAY[n_w]);
    w_count integer[] := array_fill(0, ARRAY[n_w]);
    w_before bigint[] := array_fill(NULL::bigint, ARRAY[n_w]);
    w_off bigint[] := array_fill(NULL::bigint, ARRAY[n_w]);
    -- per append: offset of its first event (NULL: nothing written), its
    -- state (0 written or pending, 1 refused, 2 replayed) and its answer
    a_off bigint[] := array_fill(NULL::bigint, ARRAY[n_app]);
    a_state integer[] := array_fill(0, ARRAY[n_app]);
    a_result jsonb[] := array_fill(NULL::jsonb, ARRAY[n_app]);
    -- Whether any append has a receipt: the receipt statements are skipped
    -- otherwise (each statement is a good part of a small append's cost).
    keyed boolean := array_remove(p_key, NULL) <> '{}'::text[];
BEGIN
    IF keyed THEN
        -- Two appends under one receipt cannot both be answered by it: the
        -- caller writes such appends one at a time (see the header).
        IF (SELECT count(*) <> count(DISTINCT (r.actor, r.key)) FROM unnest(p_actor, p_key) AS r(actor, key) WHERE r.key IS NOT NULL) THEN
            RAISE EXCEPTION 'two appends of one group under the receipt of one request' USING ERRCODE = 'cardinality_violation';
        END IF;
        FOR k IN SELECT DISTINCT hashtextextended('receipt:' || length(r.actor) || ':' || r.actor || r.key, 0)
                   FROM unnest(p_actor, p_key) AS r(actor, key) WHERE r.key IS NOT NULL ORDER BY 1 LOOP
            PERFORM pg_advisory_xact_lock(k);
        END LOOP;
    END IF;
    FOR s IN SELECT DISTINCT x FROM unnest(p_w_stream) AS x ORDER BY x LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(s, 0));
    END LOOP;
    SELECT array_agg(d.s ORDER BY d.s), array_agg((SELECT max(e.stream_version) FROM events e WHERE e.stream_id = d.s) ORDER BY d.s)
      INTO names, vers
      FROM (SELECT DISTINCT x AS s FROM unnest(p_w_stream) AS x) d;

    FOR i IN 1 .. n_e LOOP
        idx := p_e_write[i];
        IF w_count[idx] = 0 THEN
            w_first[idx] := i;
        END IF;
        w_count[idx] := w_count[idx] + 1;
    END LOOP;

    w_lo := 1;
    FOR a IN 1 .. n_app LOOP
        w_hi := w_lo;
        WHILE w_hi <= n_w AND p_w_append[w_hi] = a LOOP
            w_hi := w_hi + 1;
        END LOOP;
        w_hi := w_hi - 1;
        IF p_key[a] IS NOT NULL THEN
            SELECT r.result INTO receipt FROM append_receipts r
             WHERE r.actor = p_actor[a] AND r.key = p_key[a] AND r.recorded_at > now() - interval '24 hours';
            IF receipt IS NOT NULL THEN
                a_state[a] := 2;
                a_result[a] := receipt;
            END IF;
        END IF;
        IF a_state[a] = 0 THEN
            ok := true;
            FOR w IN w_lo .. w_hi LOOP
                cur := vers[array_position(names, p_w_stream[w])];
                IF (p_w_expected[w] = -2 AND cur IS NOT NULL) OR (p_w_expected[w] >= 0 AND cur IS DISTINCT FROM p_w_expected[w]) THEN
                    a_state[a] := 1;
                    a_result[a] := jsonb_build_array(jsonb_build_object('stream', p_w_stream[w], 'version', cur));
                    ok := false;
                    EXIT;
                END IF;
            END LOOP;
            IF ok THEN
                FOR w IN w_lo .. w_hi LOOP
                    idx := array_position(names, p_w_stream[w]);
                    w_before[w] := vers[idx];
                    IF w_count[w] > 0 THEN
                        a_off[a] := coalesce(a_off[a], taken);
                        w_off[w] := taken;
                        taken := taken + w_count[w];
                        vers[idx] := coalesce(vers[idx], -1) + w_count[w];
                    END IF;
                END LOOP;
            END IF;
        END IF;
        w_lo := w_hi + 1;
    END LOOP;

    IF taken > 0 THEN
        BEGIN
            PERFORM pg_advisory_lock(-1, 1);
            base := nextval('events_position_seq');
            IF taken > 1 THEN
                PERFORM setval('events_position_seq', base + taken - 1);
            END IF;
            PERFORM pg_advisory_xact_lock(events_marker_key1(base), events_marker_key2(base));
            PERFORM pg_advisory_unlock(-1, 1);
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            PERFORM pg_advisory_unlock(-1, 1);
            RAISE;
        END;
        INSERT INTO events (global_position, first_in_append, stream_id, stream_version, event_id, event_type, schema_version, occurred_at, metadata, data)
        SELECT base + w_off[t.w] + (t.n - w_first[t.w]),
               base + a_off[p_w_append[t.w]],
               p_w_stream[t.w],
               coalesce(w_before[t.w], -1) + 1 + (t.n - w_first[t.w]),
               t.event_id, t.event_type, t.schema_version, t.occurred_at, t.metadata, t.data
          FROM unnest(p_e_write, p_event_ids, p_types, p_schema_versions, p_occurred, p_metadata, p_data)
               WITH ORDINALITY AS t(w, event_id, event_type, schema_version, occurred_at, metadata, data, n)
         WHERE w_off[t.w] IS NOT NULL;
    END IF;

    -- What each written append with a receipt keeps as it.
    IF keyed THEN
        FOR a, receipt IN
            SELECT p_w_append[g.i], jsonb_agg(jsonb_build_object(
                       'stream', p_w_stream[g.i],
                       'version', CASE WHEN w_count[g.i] > 0 THEN coalesce(w_before[g.i], -1) + w_count[g.i] ELSE w_before[g.i] END,
                       'position', base + w_off[g.i] + w_count[g.i] - 1) ORDER BY g.i)
              FROM generate_subscripts(p_w_append, 1) AS g(i)
             WHERE a_state[p_w_append[g.i]] = 0 AND p_key[p_w_append[g.i]] IS NOT NULL AND a_off[p_w_append[g.i]] IS NOT NULL
             GROUP BY p_w_append[g.i]
        LOOP
            INSERT INTO append_receipts (actor, key, result) VALUES (p_actor[a], p_key[a], receipt)
            ON CONFLICT (actor, key) DO UPDATE SET result = EXCLUDED.result, recorded_at = now();
        END LOOP;
    END IF;

    -- Written appends answer from their writes, the others from their
    -- receipt or their conflict.
    RETURN QUERY
    SELECT u.a, u.s, u.v, u.p, u.c, u.r FROM (
        SELECT p_w_append[g.i] AS a, g.i::bigint AS o, p_w_stream[g.i] AS s,
               CASE WHEN w_count[g.i] > 0 THEN coalesce(w_before[g.i], -1) + w_count[g.i] ELSE w_before[g.i] END AS v,
               base + w_off[g.i] + w_count[g.i] - 1 AS p, false AS c, false AS r
          FROM generate_subscripts(p_w_append, 1) AS g(i)
         WHERE a_state[p_w_append[g.i]] = 0
        UNION ALL
        SELECT g.i, x.o, x.j->>'stream', (x.j->>'version')::bigint, (x.j->>'position')::bigint, a_state[g.i] = 1, a_state[g.i] = 2
          FROM generate_subscripts(p_actor, 1) AS g(i), jsonb_array_elements(a_result[g.i]) WITH ORDINALITY AS x(j, o)
         WHERE a_state[g.i] <> 0
    ) u
    ORDER BY u.a, u.o;
END;
$$;
