-- Back to one jobs table of generations (jobs of other kinds are dropped).
DROP VIEW live_workers;
DROP VIEW recent_failures;
DROP VIEW stuck_jobs;
DROP VIEW queue_summary;
DROP TRIGGER jobs_view_update ON jobs;
DROP FUNCTION jobs_view_update();
DROP VIEW jobs;
ALTER TABLE workers DROP COLUMN kinds;
COMMENT ON COLUMN workers.concurrency IS 'How many jobs it runs at once at most';

CREATE TABLE jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    status           text NOT NULL DEFAULT 'pending'
                     CONSTRAINT jobs_status_known
                     CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'canceled')),
    num_images       integer NOT NULL CONSTRAINT jobs_num_images_positive CHECK (num_images >= 1),
    animal           text NOT NULL,
    error            text,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3,
    run_at           timestamptz NOT NULL DEFAULT now(),
    worker_id        text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT jobs_processing_has_owner
        CHECK (status <> 'processing' OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL))
);
INSERT INTO jobs (id, status, num_images, animal, error, attempts, max_attempts, run_at, worker_id,
                  lease_expires_at, created_at, updated_at, started_at, finished_at)
SELECT g.job_id, CASE WHEN q.worker_id IS NULL THEN 'pending' ELSE 'processing' END, g.num_images,
       g.animal, q.error, q.attempts, q.max_attempts, q.run_at, q.worker_id, q.lease_expires_at,
       q.created_at, q.updated_at, q.started_at, NULL
FROM generations g JOIN job_queue q ON q.id = g.job_id
UNION ALL
SELECT g.job_id, f.status, g.num_images, g.animal, f.error, f.attempts, f.max_attempts, f.created_at,
       f.worker_id, NULL, f.created_at, f.finished_at, f.started_at, f.finished_at
FROM generations g JOIN finished_jobs f ON f.id = g.job_id;

COMMENT ON TABLE jobs IS 'One row per generation request; the queue itself.';
COMMENT ON COLUMN jobs.status IS 'pending -> processing -> completed | failed; canceled from pending or processing';
COMMENT ON COLUMN jobs.animal IS 'Chosen at creation, from the catalogue (GET /animals)';
COMMENT ON COLUMN jobs.error IS 'Why the last attempt failed, for people';
COMMENT ON COLUMN jobs.attempts IS 'Claims so far, including the one running now';
COMMENT ON COLUMN jobs.run_at IS 'Not claimed before this time (later than created_at for a retry)';
COMMENT ON COLUMN jobs.worker_id IS 'The worker that claimed it last (workers.id)';
COMMENT ON COLUMN jobs.lease_expires_at IS 'While processing: the claim lapses after this unless renewed';
COMMENT ON COLUMN jobs.started_at IS 'When the last attempt was claimed (database clock)';
COMMENT ON COLUMN jobs.finished_at IS 'When it reached completed, failed or canceled';
COMMENT ON COLUMN jobs.id IS 'The job id clients poll (GET /generations/{id})';
COMMENT ON COLUMN jobs.num_images IS 'How many images the client asked for';
COMMENT ON COLUMN jobs.max_attempts IS 'Claims allowed before a retryable failure becomes final';
COMMENT ON COLUMN jobs.created_at IS 'When the client created it';
COMMENT ON COLUMN jobs.updated_at IS
    'Its last change: of status, or a stored image (renewing the lease does not count)';

CREATE INDEX jobs_pending_idx ON jobs (run_at) WHERE status = 'pending';
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_finished_created_idx ON jobs (status, created_at DESC, id DESC)
    WHERE status IN ('completed', 'failed', 'canceled');
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE status IN ('completed', 'failed', 'canceled');

ALTER TABLE images DROP CONSTRAINT images_job_id_fkey;
ALTER TABLE images ADD CONSTRAINT images_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_job_id_fkey;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;

CREATE FUNCTION jobs_wake_workers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menagerie_jobs', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_wake_workers_on_insert
    AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_wake_workers();
CREATE TRIGGER jobs_wake_workers_on_requeue
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status <> 'pending' AND NEW.status = 'pending')
    EXECUTE FUNCTION jobs_wake_workers();

CREATE FUNCTION jobs_notify_canceled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menagerie_cancel', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify_canceled
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status = 'processing' AND NEW.status = 'canceled')
    EXECUTE FUNCTION jobs_notify_canceled();

CREATE FUNCTION jobs_notify_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menagerie_job_events', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify_changed
    AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.updated_at IS DISTINCT FROM NEW.updated_at)
    EXECUTE FUNCTION jobs_notify_changed();

CREATE VIEW queue_summary AS
SELECT s.status,
       count(j.id) AS jobs,
       min(j.created_at) AS oldest_created_at,
       now() - min(j.created_at) AS oldest_age,
       CASE WHEN s.status = 'pending'
            THEN count(j.id) FILTER (WHERE j.run_at <= now()) END AS due,
       CASE WHEN s.status = 'pending'
            THEN now() - min(j.run_at) FILTER (WHERE j.run_at <= now()) END AS longest_wait
FROM (VALUES (1, 'pending'), (2, 'processing'), (3, 'completed'), (4, 'failed'), (5, 'canceled'))
     AS s (position, status)
LEFT JOIN jobs j ON j.status = s.status
GROUP BY s.position, s.status
ORDER BY s.position;

CREATE VIEW stuck_jobs AS
SELECT id, status, animal, attempts, worker_id, started_at, lease_expires_at,
       now() - CASE WHEN status = 'processing' THEN started_at ELSE run_at END
           AS waiting_or_running,
       CASE
           WHEN status = 'pending' THEN 'due for over a minute and not claimed'
           WHEN lease_expires_at < now() THEN 'lease expired, not yet reclaimed'
           ELSE 'running for over 5 minutes'
       END AS reason
FROM jobs
WHERE (status = 'processing'
       AND (lease_expires_at < now() OR started_at < now() - interval '5 minutes'))
   OR (status = 'pending' AND run_at < now() - interval '1 minute')
ORDER BY waiting_or_running DESC;

CREATE VIEW recent_failures AS
SELECT id,
       CASE WHEN status = 'failed' THEN 'failed' ELSE 'retrying' END AS outcome,
       status, animal, num_images, attempts, max_attempts, error, finished_at, updated_at
FROM jobs
WHERE status = 'failed' OR (status IN ('pending', 'processing') AND error IS NOT NULL)
ORDER BY coalesce(finished_at, updated_at) DESC, id;

CREATE VIEW live_workers AS
SELECT w.id, w.host, w.pid, w.running, w.concurrency, w.started_at, w.last_seen_at,
       round(extract(epoch FROM now() - w.last_seen_at), 1) AS seconds_since_heartbeat,
       count(j.id) AS processing_jobs
FROM workers w
LEFT JOIN jobs j ON j.worker_id = w.id AND j.status = 'processing'
WHERE w.last_seen_at > now() - interval '90 seconds'
GROUP BY w.id
ORDER BY w.started_at, w.id;

DROP TABLE generations;
DROP FUNCTION job_queue_rotate(integer, bigint, interval, interval, interval);
DROP FUNCTION job_cancel(uuid);
DROP FUNCTION job_wake(text);
DROP FUNCTION job_enqueue(uuid[], text[], jsonb[], smallint[], integer[], boolean[], timestamptz[]);
DROP FUNCTION job_events_add(uuid[], integer[], text[], text[], jsonb[]);
DROP TABLE job_events;
DROP TABLE finished_jobs;
DROP TABLE job_queue;
DROP FUNCTION job_queue_partition();
DROP TABLE job_queue_rotation;
