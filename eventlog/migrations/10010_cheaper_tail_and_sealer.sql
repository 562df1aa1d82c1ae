-- What following the log and sealing it cost the database, cut down
-- (issue 21). Measured with pg_stat_statements under `cargo xtask bench
-- write` on `serve`: a tail read spent 0.41 ms of its 1.2 ms scanning
-- pg_locks for the frontier, and the sealer 0.12 ms per event on four
-- statements per event; together a third of the database's time.
--
-- 1. `read_events_after_final(p_after, p_limit)`: `read_events` for a
--    reader that knows every position up to `p_after` is final (it was at
--    or below a frontier: a position some read answered). An append still
--    in flight then has its marker above `p_after`, so the frontier is
--    found by trying the markers of the positions between `p_after` and
--    the sequence's value, a lock-table probe each, rather than by
--    scanning every lock of the cluster. A shared try on a marker fails
--    only while its append holds it; one that succeeds is of a position
--    taken already (no append will lock it again) and is let go with the
--    statement's transaction. Far behind (more than 256 positions), the
--    scan is cheaper than the probes and is used; it now counts only
--    markers (held exclusively), not readers' probes (shared). A session
--    does not see its own marker by a try (it would get the lock): no
--    session reads the log while its own append is in flight.
--
-- 2. `seal_log` computes the same hashes and seals (verify_log is
--    unchanged) with one statement for the batch's previous hashes and
--    one insert of all its hashes, instead of three statements per event.
--    A previous event in the batch is found by its place in the batch (the
--    batch is a run of consecutive positions, so a stream's events in it
--    are consecutive versions); one sealed earlier, by key.

-- The highest position taken (by appends committed, in flight or rolled
-- back), read under the gate: every append up to it has locked its
-- marker already, so whatever looks for markers after this finds every
-- one of them still in flight. Only the read needs the gate, not the look.
CREATE FUNCTION events_taken() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    hi bigint;
    called boolean;
BEGIN
    -- Taken and released inside the guarded block, as in 10005.
    BEGIN
        PERFORM pg_advisory_lock_shared(-1, 1);
        SELECT last_value, is_called INTO hi, called FROM events_position_seq;
        PERFORM pg_advisory_unlock_shared(-1, 1);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock_shared(-1, 1);
        RAISE;
    END;
    RETURN CASE WHEN called THEN hi ELSE hi - 1 END;
END;
$$;

-- The scan counts appends' markers only (held exclusively), not the
-- probes of readers (shared), which would hold it back for nothing; it
-- runs after the gate is let go (see events_taken), so writers wait less.
CREATE OR REPLACE FUNCTION events_frontier() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    hi bigint := events_taken();
    lowest bigint;
BEGIN
    SELECT min(((l.classid::bigint & 1073741823) << 32) | l.objid::bigint) INTO lowest
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.mode = 'ExclusiveLock'
       AND l.classid::bigint BETWEEN 1073741824 AND 2147483647
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
    RETURN least(hi, coalesce(lowest - 1, hi));
END;
$$;

CREATE FUNCTION events_frontier_after(p_after bigint) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    hi bigint := events_taken();
    lowest bigint;
BEGIN
    IF hi - p_after > 256 THEN
        RETURN events_frontier();
    END IF;
    -- In position order, stopping at the first marker held: the probes
    -- that succeeded (positions below it) are let go with the statement.
    SELECT p INTO lowest FROM generate_series(p_after + 1, hi) AS p
     WHERE NOT pg_try_advisory_xact_lock_shared(events_marker_key1(p), events_marker_key2(p))
     LIMIT 1;
    RETURN coalesce(lowest - 1, hi);
END;
$$;

CREATE FUNCTION read_events_after_final(p_after bigint, p_limit integer) RETURNS SETOF events LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    frontier bigint := events_frontier_after(p_after);
BEGIN
    RETURN QUERY SELECT * FROM events e
     WHERE e.global_position > p_after AND e.global_position <= frontier
     ORDER BY e.global_position LIMIT p_limit;
END;
$$;

CREATE OR REPLACE FUNCTION seal_log(p_max integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_last log_seals%ROWTYPE;
    v_seal bytea;
    v_up_to bigint;
    v_count bigint := 0;
    v_prev bytea;
    v_hash bytea;
    v_positions bigint[] := '{}';
    v_hashes bytea[] := '{}';
    r record;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('storekeeper:sealer', 0)) THEN
        RETURN 0;
    END IF;
    SELECT * INTO v_last FROM log_seals ORDER BY up_to DESC LIMIT 1;
    v_seal := coalesce(v_last.seal, '\x'::bytea);
    v_up_to := coalesce(v_last.up_to, 0);
    FOR r IN
        WITH batch AS (
            SELECT e, row_number() OVER (ORDER BY e.global_position) AS n FROM read_events(v_up_to, p_max) e
        ), placed AS (
            SELECT b.e, b.n, lag(b.n) OVER (PARTITION BY (b.e).stream_id ORDER BY b.n) AS prev_n FROM batch b
        )
        SELECT p.n, p.prev_n, (p.e).global_position AS pos, event_bytes(p.e) AS bytes,
               CASE WHEN p.prev_n IS NULL AND (p.e).stream_version > 0 THEN
                   (SELECT h.stream_hash FROM event_hashes h
                     WHERE h.global_position = (SELECT x.global_position FROM events x
                                                  WHERE x.stream_id = (p.e).stream_id AND x.stream_version = (p.e).stream_version - 1))
               END AS sealed_prev
          FROM placed p
         ORDER BY p.n
    LOOP
        v_prev := CASE WHEN r.prev_n IS NOT NULL THEN v_hashes[r.prev_n] ELSE r.sealed_prev END;
        v_hash := sha256(coalesce(v_prev, '\x'::bytea) || r.bytes);
        v_hashes := array_append(v_hashes, v_hash);
        v_positions := array_append(v_positions, r.pos);
        v_seal := sha256(v_seal || v_hash);
        v_up_to := r.pos;
        v_count := v_count + 1;
    END LOOP;
    IF v_count > 0 THEN
        INSERT INTO event_hashes (global_position, stream_hash) SELECT * FROM unnest(v_positions, v_hashes);
        INSERT INTO log_seals (up_to, events, seal) VALUES (v_up_to, coalesce(v_last.events, 0) + v_count, v_seal);
    END IF;
    RETURN v_count;
END;
$$;
