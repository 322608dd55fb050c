-- depends: 0006.general-queue
-- The dashboard's event stream (GET /generations/events) reads job_events in id order and
-- resumes after the last id a client applied. An id is taken when its event is inserted, but a
-- transaction may commit after another that took a higher id; the stream holds back at such a
-- gap until every transaction that was running when it saw the gap has ended (then a missing
-- id is one that was rolled back). That only works if a transaction recording an event
-- already has its transaction id when it takes the event's id: job_events_add now makes sure
-- of it (every statement that calls it has written a row before, but nothing made it so).
CREATE OR REPLACE FUNCTION job_events_add(ids uuid[], versions integer[], types text[], statuses text[], datas jsonb[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_current_xact_id();
    INSERT INTO job_events (job_id, version, type, status, data)
    SELECT e.job_id, e.version, e.type, e.status, e.data
    FROM unnest(ids, versions, types, statuses, coalesce(datas, array_fill(NULL::jsonb, ARRAY[cardinality(ids)])))
         AS e (job_id, version, type, status, data);
    PERFORM pg_notify('menagerie_job_events', array_to_string(ids[first:first + 199], ','))
    FROM generate_series(1, cardinality(ids), 200) AS first;
    RETURN cardinality(ids);
END
$$;

COMMENT ON COLUMN job_events.id IS
    'Increases with every event (assigned at insert: a concurrent transaction may commit a lower id a moment later; GET /generations/events waits for it)';
