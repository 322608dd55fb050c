-- Back to job_events_add as 0011.dashboard made it; webhooks and their attempts are dropped (pending
-- deliveries stay in the queue as jobs of kind webhook, which no worker runs any more).
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
DROP FUNCTION webhook_outbox(uuid[], integer[], text[], jsonb[]);
ALTER TABLE keys DROP COLUMN webhook_secret, DROP COLUMN old_webhook_secret, DROP COLUMN old_webhook_secret_until;
DROP TABLE webhook_attempts;
DROP TABLE webhooks;
