-- depends: 0002.leases-workers-cancel
-- Views an operator reads in psql (`\dv`, `\d+ stuck_jobs`), the column comments still
-- missing, and the index that lets retention find old finished jobs without a full scan.

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

COMMENT ON VIEW queue_summary IS
    'One row per status, zero jobs included: how many, the oldest, and for pending how many '
    'are due and how long the head of the queue has waited since it fell due';

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

COMMENT ON VIEW stuck_jobs IS
    'Jobs that need a look: processing with a lapsed lease or for over 5 minutes (the default '
    'JOB_TIMEOUT), pending and due for over a minute (no worker is taking work)';

CREATE VIEW recent_failures AS
SELECT id,
       CASE WHEN status = 'failed' THEN 'failed' ELSE 'retrying' END AS outcome,
       status, animal, num_images, attempts, max_attempts, error, finished_at, updated_at
FROM jobs
WHERE status = 'failed' OR (status IN ('pending', 'processing') AND error IS NOT NULL)
ORDER BY coalesce(finished_at, updated_at) DESC, id;

COMMENT ON VIEW recent_failures IS
    'Failed jobs, and unfinished jobs whose last attempt failed (outcome retrying), newest '
    'first; add LIMIT';

CREATE VIEW live_workers AS
SELECT w.id, w.host, w.pid, w.running, w.concurrency, w.started_at, w.last_seen_at,
       round(extract(epoch FROM now() - w.last_seen_at), 1) AS seconds_since_heartbeat,
       count(j.id) AS processing_jobs
FROM workers w
LEFT JOIN jobs j ON j.worker_id = w.id AND j.status = 'processing'
WHERE w.last_seen_at > now() - interval '90 seconds'
GROUP BY w.id
ORDER BY w.started_at, w.id;

COMMENT ON VIEW live_workers IS
    'Workers heard from in the last 90 seconds (three leases of the default 30 s), with the '
    'jobs they hold now';

COMMENT ON COLUMN jobs.id IS 'The job id clients poll (GET /generations/{id})';
COMMENT ON COLUMN jobs.num_images IS 'How many images the client asked for';
COMMENT ON COLUMN jobs.max_attempts IS 'Claims allowed before a retryable failure becomes final';
COMMENT ON COLUMN jobs.created_at IS 'When the client created it';
COMMENT ON COLUMN jobs.updated_at IS
    'Its last change: of status, or a stored image (renewing the lease does not count)';
COMMENT ON COLUMN workers.id IS 'host-pid-suffix, as written in jobs.worker_id';
COMMENT ON COLUMN workers.host IS 'Host name (the container id under Docker)';
COMMENT ON COLUMN workers.pid IS 'Process id on that host';
COMMENT ON COLUMN workers.concurrency IS 'How many jobs it runs at once at most';
COMMENT ON COLUMN workers.started_at IS 'Its first heartbeat';

-- Retention deletes the oldest finished jobs first, in small batches.
CREATE INDEX jobs_finished_idx ON jobs (finished_at)
    WHERE status IN ('completed', 'failed', 'canceled');
