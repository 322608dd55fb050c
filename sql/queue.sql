-- The queue core's statements (app/queue/ names them): jobs of any kind, waiting and running in
-- job_queue, finished in finished_jobs; workers; maintenance. Nothing here knows what a kind
-- does. Statements that change a job's status record an event for watched jobs
-- (job_events_add, in the same statement) and bump its version.

-- name: job_enqueue
-- Creates jobs, one per array element (see the job_enqueue function: one NOTIFY per kind, a
-- `created` event for watched ones). Returns (job_id, created_at) of each.
-- $1 ids (uuid[]), $2 kinds (text[]), $3 args (jsonb[]), $4 priorities (smallint[]),
-- $5 max_attempts (integer[]), $6 watched (boolean[]), $7 run_at (timestamptz[], NULL: now)
SELECT job_id, created_at
FROM job_enqueue($1::uuid[], $2::text[], $3::jsonb[], $4::smallint[], $5::integer[], $6::boolean[], $7::timestamptz[]);

-- name: job_claim
-- Claims due jobs for worker $1, oldest first within each kind's priority: up to $3[i] of kind
-- $2[i], in one statement. SKIP LOCKED lets concurrent workers pass over each other's rows.
-- $1 worker_id, $2 kinds (text[]), $3 how many of each (integer[]), $4 lease in seconds
WITH claimed AS (
    UPDATE job_queue q
    SET worker_id = $1,
        attempts = q.attempts + 1,
        version = q.version + 1,
        lease_expires_at = clock_timestamp() + make_interval(secs => $4),
        started_at = clock_timestamp(),
        updated_at = clock_timestamp()
    WHERE q.id = ANY(ARRAY(
        SELECT due.id
        FROM unnest($2::text[], $3::integer[]) AS wanted (kind, n),
        LATERAL (
            SELECT id FROM job_queue
            WHERE kind = wanted.kind AND worker_id IS NULL AND run_at <= now()
            ORDER BY priority DESC, run_at
            LIMIT wanted.n
            FOR UPDATE SKIP LOCKED
        ) AS due
    ))
    RETURNING q.id, q.kind, q.args, q.attempts, q.max_attempts, q.run_at, q.started_at,
              q.created_at, q.watched, q.version
), recorded AS (
    SELECT job_events_add(array_agg(id), array_agg(version), array_agg('started'::text), array_agg('processing'::text),
                          array_agg(jsonb_build_object('attempt', attempts)))
    FROM claimed WHERE watched
)
SELECT c.id, c.kind, c.args, c.attempts, c.max_attempts, c.run_at, c.started_at, c.created_at
FROM claimed c, recorded;

-- name: job_claim_kind
-- Like job_claim, for one kind: up to $3 due jobs of kind $2. The same work in a simpler
-- statement, which counts when a worker wakes from idle: PostgreSQL runs it about a
-- millisecond sooner on a cold CPU than the lateral join over kinds.
-- $1 worker_id, $2 kind, $3 how many, $4 lease in seconds
WITH claimed AS (
    UPDATE job_queue q
    SET worker_id = $1,
        attempts = q.attempts + 1,
        version = q.version + 1,
        lease_expires_at = clock_timestamp() + make_interval(secs => $4),
        started_at = clock_timestamp(),
        updated_at = clock_timestamp()
    WHERE q.id = ANY(ARRAY(
        SELECT id FROM job_queue
        WHERE kind = $2 AND worker_id IS NULL AND run_at <= now()
        ORDER BY priority DESC, run_at
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING q.id, q.kind, q.args, q.attempts, q.max_attempts, q.run_at, q.started_at,
              q.created_at, q.watched, q.version
), recorded AS (
    SELECT job_events_add(array_agg(id), array_agg(version), array_agg('started'::text), array_agg('processing'::text),
                          array_agg(jsonb_build_object('attempt', attempts)))
    FROM claimed WHERE watched
)
SELECT c.id, c.kind, c.args, c.attempts, c.max_attempts, c.run_at, c.started_at, c.created_at
FROM claimed c, recorded;

-- name: job_next_due
-- When the earliest waiting job of each of kinds $1 falls due; kinds with no waiting job are
-- left out.
-- $1 kinds (text[])
SELECT kind, min(run_at) AS due FROM job_queue
WHERE kind = ANY($1::text[]) AND worker_id IS NULL
GROUP BY kind;

-- name: job_complete_many
-- Completes jobs, each only if worker $1 still owns that attempt of it: the job_queue row goes,
-- the finished_jobs record comes, in one statement for all the jobs a worker finished in the
-- last few milliseconds. Each row is found through the primary key, one at a time (LATERAL:
-- a plan that reads the partition instead costs a millisecond per thousand dead rows), and
-- locked in the order of $2, which callers sort, like every statement that changes several
-- running jobs: two of them cannot deadlock. Returns the ids completed.
-- $1 worker_id, $2 job ids (uuid[]), $3 their attempts (integer[], same order)
WITH done AS (
    DELETE FROM job_queue q
    WHERE q.id = ANY(ARRAY(
        SELECT mine.id FROM unnest($2::uuid[], $3::integer[]) AS held (id, attempt),
        LATERAL (SELECT id FROM job_queue WHERE id = held.id AND attempts = held.attempt AND worker_id = $1
                 FOR UPDATE) AS mine
    ))
    RETURNING q.*
), finished AS (
    INSERT INTO finished_jobs (id, kind, status, priority, args, attempts, max_attempts, worker_id,
                               error, created_at, started_at, finished_at, version)
    SELECT id, kind, 'completed', priority, args, attempts, max_attempts, worker_id, NULL,
           created_at, started_at, clock_timestamp(), version + 1
    FROM done
), recorded AS (
    SELECT job_events_add(array_agg(id), array_agg(version + 1), array_agg('completed'::text), array_agg('completed'::text))
    FROM done WHERE watched
)
SELECT d.id FROM done d, recorded;

-- name: job_fail_many
-- Fails jobs for good with a readable error each, only if worker $1 still owns that attempt.
-- Returns the ids failed.
-- $1 worker_id, $2 job ids (uuid[]), $3 their attempts (integer[]), $4 errors (text[])
WITH done AS (
    DELETE FROM job_queue q
    USING unnest($2::uuid[], $3::integer[], $4::text[]) AS d (id, attempt, error)
    WHERE q.id = ANY(ARRAY(
        SELECT mine.id FROM unnest($2::uuid[], $3::integer[]) AS held (id, attempt),
        LATERAL (SELECT id FROM job_queue WHERE id = held.id AND attempts = held.attempt AND worker_id = $1
                 FOR UPDATE) AS mine
    )) AND q.id = d.id
    RETURNING q.*, d.error AS reason
), finished AS (
    INSERT INTO finished_jobs (id, kind, status, priority, args, attempts, max_attempts, worker_id,
                               error, created_at, started_at, finished_at, version)
    SELECT id, kind, 'failed', priority, args, attempts, max_attempts, worker_id, reason,
           created_at, started_at, clock_timestamp(), version + 1
    FROM done
), recorded AS (
    SELECT job_events_add(array_agg(id), array_agg(version + 1), array_agg('failed'::text), array_agg('failed'::text))
    FROM done WHERE watched
)
SELECT d.id FROM done d, recorded;

-- name: job_retry_many
-- Puts failed attempts back in the queue, each due after its delay, only if worker $1 still
-- owns that attempt; wakes the workers of their kinds. Returns the ids requeued.
-- $1 worker_id, $2 job ids (uuid[]), $3 their attempts (integer[]), $4 errors (text[]),
-- $5 delays in seconds (float8[])
WITH retried AS (
    UPDATE job_queue q
    SET worker_id = NULL,
        lease_expires_at = NULL,
        error = d.error,
        run_at = clock_timestamp() + make_interval(secs => d.delay),
        updated_at = clock_timestamp(),
        version = q.version + 1
    FROM unnest($2::uuid[], $4::text[], $5::float8[]) AS d (id, error, delay)
    WHERE q.id = ANY(ARRAY(
        SELECT mine.id FROM unnest($2::uuid[], $3::integer[]) AS held (id, attempt),
        LATERAL (SELECT id FROM job_queue WHERE id = held.id AND attempts = held.attempt AND worker_id = $1
                 FOR UPDATE) AS mine
    )) AND q.id = d.id
    RETURNING q.id, q.kind, q.watched, q.version, q.error, q.run_at
), woken AS (
    SELECT sum(job_wake(kind)) AS kinds FROM (SELECT DISTINCT kind FROM retried) AS k
), recorded AS (
    SELECT job_events_add(array_agg(id), array_agg(version), array_agg('retrying'::text), array_agg('pending'::text),
                          array_agg(jsonb_build_object('error', error, 'runAt', run_at)))
    FROM retried WHERE watched
)
SELECT r.id FROM retried r, woken, recorded;

-- name: job_hand_back
-- A stopping worker returns the jobs it did not finish, due now and without counting the
-- attempt, so another worker takes them at once (woken by kind). Locks rows in the order of
-- $2 (see job_complete_many). Returns the ids handed back.
-- $1 worker_id, $2 job ids (uuid[]), $3 their attempts (integer[], same order)
WITH handed AS (
    UPDATE job_queue q
    SET worker_id = NULL,
        lease_expires_at = NULL,
        attempts = q.attempts - 1,
        run_at = clock_timestamp(),
        updated_at = clock_timestamp(),
        version = q.version + 1
    WHERE q.id = ANY(ARRAY(
        SELECT mine.id FROM unnest($2::uuid[], $3::integer[]) AS held (id, attempt),
        LATERAL (SELECT id FROM job_queue WHERE id = held.id AND attempts = held.attempt AND worker_id = $1
                 FOR UPDATE) AS mine
    ))
    RETURNING q.id, q.kind, q.watched, q.version
), woken AS (
    SELECT sum(job_wake(kind)) AS kinds FROM (SELECT DISTINCT kind FROM handed) AS k
), recorded AS (
    SELECT job_events_add(array_agg(id), array_agg(version), array_agg('requeued'::text), array_agg('pending'::text))
    FROM handed WHERE watched
)
SELECT h.id FROM handed h, woken, recorded;

-- name: job_renew_leases
-- Extends the leases of the jobs among $2 that worker $1 still owns at attempt $3; returns
-- their ids (a missing id was canceled, reclaimed or finished). A HOT update: nothing it
-- changes is indexed. Locks rows in the order of $2 (see job_complete_many).
-- $1 worker_id, $2 job ids (uuid[]), $3 their attempts (integer[]), $4 lease in seconds
UPDATE job_queue q
SET lease_expires_at = clock_timestamp() + make_interval(secs => $4)
WHERE q.id = ANY(ARRAY(
    SELECT mine.id FROM unnest($2::uuid[], $3::integer[]) AS held (id, attempt),
    LATERAL (SELECT id FROM job_queue WHERE id = held.id AND attempts = held.attempt AND worker_id = $1
             FOR UPDATE) AS mine
))
RETURNING q.id;

-- name: job_owned
-- Whether worker $2 still owns attempt $3 of job $1 (it is running there, not canceled,
-- reclaimed or finished).
-- $1 id, $2 worker_id, $3 attempt
SELECT EXISTS (SELECT FROM job_queue WHERE id = $1 AND worker_id = $2 AND attempts = $3);

-- name: job_reclaim_expired
-- Jobs whose lease lapsed (their worker died or stalled) go back to waiting, due now, or fail
-- when they have used all their attempts. SKIP LOCKED: workers reclaim side by side. Finds
-- them by reading the queue (leases are not indexed, so renewing one stays a HOT update).
-- Returns (id, kind, status, worker_id) of each.
-- $1 how many at most
WITH lapsed AS (
    SELECT id, worker_id, attempts >= max_attempts AS spent,
           'worker ' || worker_id || ' stopped renewing its lease (attempt ' || attempts || ' of '
           || max_attempts || ')' AS reason
    FROM job_queue
    WHERE worker_id IS NOT NULL AND lease_expires_at < clock_timestamp()
    ORDER BY lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), requeued AS (
    UPDATE job_queue q
    SET worker_id = NULL, lease_expires_at = NULL, error = l.reason, run_at = clock_timestamp(),
        updated_at = clock_timestamp(), version = q.version + 1
    FROM lapsed l
    WHERE q.id = l.id AND NOT l.spent
    RETURNING q.id, q.kind, q.watched, q.version, l.reason, l.worker_id
), failed AS (
    DELETE FROM job_queue q USING lapsed l
    WHERE q.id = l.id AND l.spent
    RETURNING q.*, l.reason
), finished AS (
    INSERT INTO finished_jobs (id, kind, status, priority, args, attempts, max_attempts, worker_id,
                               error, created_at, started_at, finished_at, version)
    SELECT id, kind, 'failed', priority, args, attempts, max_attempts, worker_id, reason,
           created_at, started_at, clock_timestamp(), version + 1
    FROM failed
), changed AS (
    SELECT id, kind, watched, version, 'requeued' AS event, 'pending' AS status, reason, worker_id
    FROM requeued
    UNION ALL
    SELECT id, kind, watched, version + 1, 'failed', 'failed', reason, worker_id FROM failed
), woken AS (
    SELECT sum(job_wake(kind)) AS kinds FROM (SELECT DISTINCT kind FROM requeued) AS k
), recorded AS (
    SELECT job_events_add(array_agg(id), array_agg(version), array_agg(event), array_agg(status),
                          array_agg(jsonb_build_object('error', reason)))
    FROM changed WHERE watched
)
SELECT c.id, c.kind, c.status, c.worker_id FROM changed c, woken, recorded;

-- name: job_cancel
-- Cancels a waiting or running job (see the job_cancel function): returns the status it had,
-- pending or processing, or NULL when it is unknown or already finished.
-- $1 id
SELECT job_cancel($1);

-- name: job_queue_rotate
-- Empties and truncates the oldest partition of job_queue when dead rows pile up that VACUUM
-- cannot remove (see the job_queue_rotate function); returns the rows moved, or NULL when it
-- did nothing.
-- $1 most rows to move, $2 fewest dead rows worth a rotation, $3 least seconds between
-- rotations, $4 longest wait for the partition's lock in seconds, $5 how long a transaction
-- must have held back VACUUM (seconds)
SELECT job_queue_rotate($1, $2, make_interval(secs => $3), make_interval(secs => $4), make_interval(secs => $5));

-- name: job_pending_count_capped
-- How many jobs of kind $1 wait, counting no further than $2 (reads the claim's index).
-- $1 kind, $2 cap
SELECT count(*) FROM (SELECT FROM job_queue WHERE kind = $1 AND worker_id IS NULL LIMIT $2) AS capped;

-- name: job_queue_depth
-- Jobs of kind $1 waiting and running, and when the oldest due waiting job fell due.
-- $1 kind
SELECT count(*) FILTER (WHERE worker_id IS NULL) AS pending,
       count(*) FILTER (WHERE worker_id IS NOT NULL) AS processing,
       min(run_at) FILTER (WHERE worker_id IS NULL AND run_at <= now()) AS oldest_due,
       now() AS now
FROM job_queue WHERE kind = $1;

-- name: finished_jobs_delete_old
-- Deletes up to $2 jobs of kinds $3 that finished more than $1 days ago, oldest first, and
-- their events; SKIP LOCKED passes over rows another transaction is deleting. Returns
-- (id, kind) of each. Kinds this process does not know are left alone: what they keep of
-- their jobs would be left behind.
-- $1 days (float), $2 how many at most, $3 kinds (text[])
WITH old AS (
    DELETE FROM finished_jobs
    WHERE id IN (
        SELECT id FROM finished_jobs
        WHERE finished_at < now() - $1::float8 * interval '1 day' AND kind = ANY($3::text[])
        ORDER BY finished_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, kind
), events AS (
    DELETE FROM job_events WHERE job_id IN (SELECT id FROM old)
)
SELECT id, kind FROM old;

-- name: maintenance_try_lock
-- Takes advisory lock $1 for the current transaction, without waiting; false when another
-- worker holds it (a maintenance round that one worker at a time should run).
-- $1 lock key
SELECT pg_try_advisory_xact_lock($1);

-- name: worker_heartbeat
-- Records that a worker is alive, which kinds it runs and how many jobs it runs (creating its
-- row if needed).
-- $1 id, $2 host, $3 pid, $4 concurrency, $5 running, $6 kinds (text[])
INSERT INTO workers (id, host, pid, concurrency, running, kinds)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE
SET running = EXCLUDED.running, last_seen_at = clock_timestamp();

-- name: worker_delete
-- Removes a worker that stopped cleanly.
-- $1 id
DELETE FROM workers WHERE id = $1;

-- name: worker_delete_dead
-- Removes workers not seen for $1 seconds; returns their ids.
-- $1 seconds
DELETE FROM workers
WHERE last_seen_at < clock_timestamp() - make_interval(secs => $1)
RETURNING id;

-- name: job_events_head
-- The id of the last event recorded and the snapshot it was read under: where a follower of
-- every job's events starts (see job_events_settled for what the snapshot is for).
-- no parameters
SELECT coalesce(max(id), 0) AS last_id, pg_current_snapshot()::text AS snapshot FROM job_events;

-- name: job_events_settled
-- Whether every transaction that was running under snapshot $1 has ended. An event id that
-- was missing under $1 and is still missing now was rolled back (or its job deleted): it will
-- never be committed, and a follower may pass over it.
-- $1 snapshot (pg_snapshot as text)
SELECT pg_snapshot_xmin(pg_current_snapshot()) >= pg_snapshot_xmax($1::text::pg_snapshot);

-- name: queue_overview_kinds
-- Per kind: jobs waiting and running, how many waiting jobs are due, and how long the head of
-- the queue has waited since it fell due: queue_summary's pending and processing rows, read
-- from job_queue alone (the view also counts finished_jobs, a scan of every job ever kept).
-- Kinds with no waiting or running job appear when a live worker runs them.
-- no parameters
WITH kinds AS (
    SELECT DISTINCT kind FROM job_queue
    UNION
    SELECT unnest(kinds) FROM live_workers
)
SELECT k.kind,
       count(q.id) FILTER (WHERE q.worker_id IS NULL) AS pending,
       count(q.id) FILTER (WHERE q.worker_id IS NOT NULL) AS processing,
       count(q.id) FILTER (WHERE q.worker_id IS NULL AND q.run_at <= now()) AS due,
       extract(epoch FROM now() - min(q.run_at) FILTER (WHERE q.worker_id IS NULL AND q.run_at <= now()))::float8
           AS longest_wait_seconds
FROM kinds k LEFT JOIN job_queue q ON q.kind = k.kind
GROUP BY k.kind
ORDER BY k.kind;

-- name: queue_overview_workers
-- The live workers (the view live_workers): who they are, the kinds they run, their slots and
-- the jobs they hold now.
-- no parameters
SELECT id, host, pid, kinds, running, concurrency, started_at, last_seen_at,
       seconds_since_heartbeat::float8 AS seconds_since_heartbeat, processing_jobs
FROM live_workers;

-- name: queue_overview_failures
-- Failures in the last hour (the view recent_failures): jobs that failed for good, and jobs
-- whose last attempt failed and that wait for, or run, a retry.
-- no parameters
SELECT count(*) FILTER (WHERE outcome = 'failed') AS failed,
       count(*) FILTER (WHERE outcome = 'retrying') AS retrying
FROM recent_failures WHERE updated_at > now() - interval '1 hour';
