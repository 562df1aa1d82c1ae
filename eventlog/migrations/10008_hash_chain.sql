-- Tamper evidence for the log, kept off the append path: appends write
-- exactly what they wrote before, and a sealer (every process runs one;
-- a lock lets one work at a time) hashes what has become final since.
--
-- event_hashes: per stream, a chain. An event's hash is
--   sha256(hash of the stream's previous event || the event's stored bytes)
-- so altering an event breaks its hash, and removing one breaks the next.
--
-- log_seals: over position order, a chain of every hash: after each run of
-- the sealer, seal = sha256(... sha256(previous seal || h1) ... || hn)
-- over the hashes of the events it sealed, in position order. Removing a
-- stream whole (events and hashes) breaks the first seal after it. Keep
-- the latest seal somewhere else too (`storekeeper events verify` prints
-- it): with it, not even someone who recomputes every hash goes unseen.
CREATE TABLE event_hashes (
    global_position bigint PRIMARY KEY,
    stream_hash bytea NOT NULL
);

CREATE TABLE log_seals (
    up_to bigint PRIMARY KEY,
    events bigint NOT NULL,
    seal bytea NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT now()
);

-- The bytes an event's hash covers: every column of the fact, in a fixed
-- order, separated by a unit separator (which no stored text holds raw:
-- stream ids and types refuse control characters, and jsonb's text escapes
-- them). Times as epoch seconds, so the session's time zone and date style
-- change nothing.
CREATE FUNCTION event_bytes(e events) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_to(concat_ws(chr(31),
        e.global_position, e.stream_id, e.stream_version, e.event_id, e.event_type, e.schema_version,
        extract(epoch FROM e.occurred_at), extract(epoch FROM e.recorded_at), e.metadata::text, e.data::text), 'UTF8')
$$;

-- Hashes and seals up to p_max events that are final (below the read
-- frontier) and not yet sealed; answers how many. Another sealer at work:
-- answers 0 at once.
CREATE FUNCTION seal_log(p_max integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_last log_seals%ROWTYPE;
    v_seal bytea;
    v_up_to bigint;
    v_count bigint := 0;
    v_prev_pos bigint;
    v_prev bytea;
    v_hash bytea;
    r events%ROWTYPE;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('storekeeper:sealer', 0)) THEN
        RETURN 0;
    END IF;
    SELECT * INTO v_last FROM log_seals ORDER BY up_to DESC LIMIT 1;
    v_seal := coalesce(v_last.seal, '\x'::bytea);
    v_up_to := coalesce(v_last.up_to, 0);
    FOR r IN SELECT * FROM read_events(v_up_to, p_max) LOOP
        -- Two lookups by key rather than a join: the hashes written earlier
        -- in this call are not in the planner's statistics yet, and a join
        -- planned on them scans the whole table for each event.
        v_prev := NULL;
        IF r.stream_version > 0 THEN
            SELECT global_position INTO v_prev_pos FROM events WHERE stream_id = r.stream_id AND stream_version = r.stream_version - 1;
            SELECT stream_hash INTO v_prev FROM event_hashes WHERE global_position = v_prev_pos;
        END IF;
        v_hash := sha256(coalesce(v_prev, '\x'::bytea) || event_bytes(r));
        INSERT INTO event_hashes (global_position, stream_hash) VALUES (r.global_position, v_hash);
        v_seal := sha256(v_seal || v_hash);
        v_up_to := r.global_position;
        v_count := v_count + 1;
    END LOOP;
    IF v_count > 0 THEN
        INSERT INTO log_seals (up_to, events, seal) VALUES (v_up_to, coalesce(v_last.events, 0) + v_count, v_seal);
    END IF;
    RETURN v_count;
END;
$$;

-- Every sealed event checked against its hash and its stream's chain, and
-- every seal against the hashes before it. Answers the first problem by
-- position (none: problem_at is null), how many events were checked and
-- how many still wait for the sealer.
CREATE FUNCTION verify_log(OUT problem_at bigint, OUT problem text, OUT checked bigint, OUT unsealed bigint)
LANGUAGE plpgsql AS $$
DECLARE
    c_seal_broken CONSTANT text := 'the seal up to this position does not match: an event at or below it, after the seal before, was removed';
    v_sealed_to bigint;
    v_chain bytea := '\x'::bytea;
    v_prev bytea;
    v_next_up_to bigint;
    v_next_seal bytea;
    v_orphan bigint;
    v_beyond bigint;
    r record;
BEGIN
    checked := 0;
    SELECT coalesce(max(up_to), 0) INTO v_sealed_to FROM log_seals;
    SELECT count(*) INTO unsealed FROM events WHERE global_position > v_sealed_to;
    -- The sealer writes hashes and their seal together: a hash above the
    -- last seal means seals were removed.
    SELECT min(global_position) INTO v_beyond FROM event_hashes WHERE global_position > v_sealed_to;
    -- A hash whose event is gone: that event was removed.
    SELECT h.global_position INTO v_orphan FROM event_hashes h
     WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.global_position = h.global_position)
     ORDER BY h.global_position LIMIT 1;
    -- Each seal ends at an event's position: passing that position without
    -- meeting the event, or meeting it with another chain, breaks the seal.
    SELECT up_to, seal INTO v_next_up_to, v_next_seal FROM log_seals ORDER BY up_to LIMIT 1;
    FOR r IN SELECT e AS event, e.global_position AS pos, e.stream_id AS stream, e.stream_version AS version, h.stream_hash AS stored
               FROM events e LEFT JOIN event_hashes h USING (global_position)
              WHERE e.global_position <= v_sealed_to
              ORDER BY e.global_position LOOP
        IF v_orphan IS NOT NULL AND v_orphan < r.pos THEN
            EXIT;
        END IF;
        IF v_next_up_to < r.pos THEN
            problem_at := v_next_up_to;
            problem := c_seal_broken;
            RETURN;
        END IF;
        IF r.stored IS NULL THEN
            problem_at := r.pos;
            problem := 'the event at this position has no hash though the log is sealed past it';
            RETURN;
        END IF;
        v_prev := NULL;
        IF r.version > 0 THEN
            SELECT h.stream_hash INTO v_prev FROM events p JOIN event_hashes h USING (global_position)
             WHERE p.stream_id = r.stream AND p.stream_version = r.version - 1;
            IF v_prev IS NULL THEN
                problem_at := r.pos;
                problem := format('the event before this one in stream %s (version %s) was removed', r.stream, r.version - 1);
                RETURN;
            END IF;
        END IF;
        IF sha256(coalesce(v_prev, '\x'::bytea) || event_bytes(r.event)) <> r.stored THEN
            problem_at := r.pos;
            problem := 'the event at this position was altered: its stored bytes do not match its hash';
            RETURN;
        END IF;
        v_chain := sha256(v_chain || r.stored);
        checked := checked + 1;
        IF v_next_up_to = r.pos THEN
            IF v_next_seal <> v_chain THEN
                problem_at := r.pos;
                problem := c_seal_broken;
                RETURN;
            END IF;
            SELECT up_to, seal INTO v_next_up_to, v_next_seal FROM log_seals WHERE up_to > r.pos ORDER BY up_to LIMIT 1;
        END IF;
    END LOOP;
    IF v_orphan IS NOT NULL AND v_orphan <= v_sealed_to THEN
        problem_at := v_orphan;
        problem := 'the event at this position was removed (its hash remains)';
    ELSIF v_next_up_to IS NOT NULL THEN
        -- A seal whose last event is gone, with every event after it.
        problem_at := v_next_up_to;
        problem := c_seal_broken;
    ELSIF v_beyond IS NOT NULL THEN
        problem_at := v_beyond;
        problem := 'this position has a hash but no seal covers it: seals were removed';
    END IF;
END;
$$;

-- Logs written before this change: hashed and sealed now.
SELECT seal_log(NULL);
