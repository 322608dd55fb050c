-- depends: 0006.general-queue 0007.keys 0011.dashboard
-- Webhooks: a generation may name a URL to be called when it starts, stores an image or ends.
-- Each call is a job of kind 'webhook' (the delivery), enqueued by job_events_add in the very
-- statement that changes the generation (an outbox): a change that rolls back sends nothing,
-- one that commits is delivered even if every worker dies right after.

CREATE TABLE webhooks (
    job_id       uuid PRIMARY KEY REFERENCES generations (job_id) ON DELETE CASCADE,
    url          text NOT NULL,
    events       text[] NOT NULL
                 CONSTRAINT webhooks_events_known
                 CHECK (cardinality(events) >= 1 AND events <@ ARRAY['start', 'image', 'completed']),
    max_attempts integer NOT NULL CONSTRAINT webhooks_max_attempts_positive CHECK (max_attempts >= 1),
    sequence     integer NOT NULL DEFAULT 0,
    started      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE webhooks IS
    'The webhook a generation asked for (POST /generations webhook, webhookEvents); deliveries are jobs of kind webhook';
COMMENT ON COLUMN webhooks.job_id IS 'The generation (jobs.id) whose changes are reported';
COMMENT ON COLUMN webhooks.url IS 'Where deliveries are POSTed (checked again at each delivery: no private addresses)';
COMMENT ON COLUMN webhooks.events IS 'Which changes are delivered: start (first claim), image (each stored image), completed (any end: completed, failed, canceled)';
COMMENT ON COLUMN webhooks.max_attempts IS 'Attempts each delivery gets (WEBHOOK_RETRY_SCHEDULE''s delays + 1 when the job was created)';
COMMENT ON COLUMN webhooks.sequence IS 'Deliveries enqueued so far: the last one''s sequence number (1, 2, 3... per job)';
COMMENT ON COLUMN webhooks.started IS 'Whether the start delivery was enqueued (it fires once, at the first claim)';

CREATE TABLE webhook_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES webhooks (job_id) ON DELETE CASCADE,
    delivery_id uuid NOT NULL,
    event       text NOT NULL,
    sequence    integer NOT NULL,
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    outcome     text NOT NULL
                CONSTRAINT webhook_attempts_outcome_known
                CHECK (outcome IN ('delivered', 'retrying', 'gone', 'refused', 'failed')),
    status_code integer,
    error       text,
    latency_ms  double precision
);
CREATE INDEX webhook_attempts_job_idx ON webhook_attempts (job_id, id);

COMMENT ON TABLE webhook_attempts IS 'Every attempt to deliver a webhook, as GET /generations/{id}/webhooks lists them';
COMMENT ON COLUMN webhook_attempts.job_id IS 'The generation the delivery reports on';
COMMENT ON COLUMN webhook_attempts.delivery_id IS 'The delivery (a job of kind webhook); its webhook-id header is msg_ and this id''s hex';
COMMENT ON COLUMN webhook_attempts.event IS 'start, image or completed';
COMMENT ON COLUMN webhook_attempts.sequence IS 'The delivery''s sequence number within the job';
COMMENT ON COLUMN webhook_attempts.attempt IS 'Which attempt of the delivery: 1, 2, ...';
COMMENT ON COLUMN webhook_attempts.at IS 'When the attempt started';
COMMENT ON COLUMN webhook_attempts.outcome IS 'delivered (2xx), retrying (will be tried again), gone (410: never again), refused (the address is not allowed), failed (attempts used up)';
COMMENT ON COLUMN webhook_attempts.status_code IS 'The receiver''s HTTP status; NULL when none came (timeout, connection error, refused)';
COMMENT ON COLUMN webhook_attempts.error IS 'Why it did not succeed, for people; NULL when delivered';
COMMENT ON COLUMN webhook_attempts.latency_ms IS 'From sending the request to the response''s status (or the failure), in milliseconds';

-- Each API key signs its jobs' deliveries with its own secret, shown once by `keys create`
-- and `keys rotate-webhook-secret` (WEBHOOK_SECRET signs those of jobs without one). The
-- secret is stored as it is: a delivery's HMAC needs it.
ALTER TABLE keys ADD COLUMN webhook_secret bytea;
ALTER TABLE keys ADD COLUMN old_webhook_secret bytea;
ALTER TABLE keys ADD COLUMN old_webhook_secret_until timestamptz;
COMMENT ON COLUMN keys.webhook_secret IS 'The key of its whsec_ webhook secret (the bytes after whsec_, decoded): signs its jobs'' deliveries; NULL for keys made before webhooks (WEBHOOK_SECRET signs instead)';
COMMENT ON COLUMN keys.old_webhook_secret IS 'The secret before the last rotation, which also signs until old_webhook_secret_until';
COMMENT ON COLUMN keys.old_webhook_secret_until IS 'When the old secret stops signing (keys rotate-webhook-secret --overlap)';

-- Enqueues the deliveries the changes of jobs `ids` call for (see job_events_add, which calls
-- it with every change of a watched job): `start` for a job's first claim, `image` for each
-- stored image, `completed` for any end. Each delivery's args are the job, the event, its
-- sequence number and the job's version after the change (the worker renders the job as it
-- was then). Returns how many were enqueued.
CREATE FUNCTION webhook_outbox(ids uuid[], versions integer[], types text[], datas jsonb[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    IF NOT EXISTS (SELECT FROM webhooks WHERE job_id = ANY (ids)) THEN
        RETURN 0;
    END IF;
    WITH changed AS (
        SELECT e.job_id, e.version, e.ord,
               CASE WHEN e.type = 'started' THEN 'start'
                    WHEN e.type = 'progress' AND e.data ? 'image' THEN 'image'
                    WHEN e.type IN ('completed', 'failed', 'canceled') THEN 'completed'
               END AS event
        FROM unnest(ids, versions, types, datas) WITH ORDINALITY AS e (job_id, version, type, data, ord)
    ), wanted AS (
        SELECT c.job_id, c.version, c.event, w.max_attempts,
               row_number() OVER (PARTITION BY c.job_id ORDER BY c.ord) AS n
        FROM changed c JOIN webhooks w ON w.job_id = c.job_id
        WHERE c.event = ANY (w.events) AND (c.event <> 'start' OR NOT w.started)
    ), counted AS (
        UPDATE webhooks w
        SET sequence = w.sequence + n.count, started = w.started OR n.start
        FROM (SELECT job_id, count(*)::integer AS count, bool_or(event = 'start') AS start
              FROM wanted GROUP BY job_id) AS n
        WHERE w.job_id = n.job_id
        RETURNING w.job_id, w.sequence - n.count AS before
    ), deliveries AS (
        SELECT array_agg(gen_random_uuid()) AS ids,
               array_agg('webhook'::text) AS kinds,
               array_agg(jsonb_build_object('job', wa.job_id, 'event', wa.event,
                                            'sequence', c.before + wa.n, 'version', wa.version)) AS args,
               array_agg(0::smallint) AS priorities,
               array_agg(wa.max_attempts) AS max_attempts,
               array_agg(false) AS watched,
               array_agg(NULL::timestamptz) AS run_ats
        FROM wanted wa JOIN counted c ON c.job_id = wa.job_id
    )
    SELECT count(*) INTO queued
    FROM deliveries d,
         LATERAL job_enqueue(d.ids, d.kinds, d.args, d.priorities, d.max_attempts, d.watched, d.run_ats);
    RETURN queued;
END
$$;

-- job_events_add as 0011.dashboard left it (the transaction id first), and the webhook
-- deliveries the changes call for. A later migration that redefines it keeps this call.
CREATE OR REPLACE FUNCTION job_events_add(ids uuid[], versions integer[], types text[], statuses text[], datas jsonb[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_current_xact_id();
    datas := coalesce(datas, array_fill(NULL::jsonb, ARRAY[cardinality(ids)]));
    INSERT INTO job_events (job_id, version, type, status, data)
    SELECT e.job_id, e.version, e.type, e.status, e.data
    FROM unnest(ids, versions, types, statuses, datas) AS e (job_id, version, type, status, data);
    PERFORM webhook_outbox(ids, versions, types, datas);
    PERFORM pg_notify('menagerie_job_events', array_to_string(ids[first:first + 199], ','))
    FROM generate_series(1, cardinality(ids), 200) AS first;
    RETURN cardinality(ids);
END
$$;
