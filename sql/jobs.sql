-- Queries on the jobs table. Each section: a `-- name:` header, what it does, its parameters.
-- The queue's own statements (claim, complete, fail) are here too; app/queue.py names them.

-- name: job_insert
-- Creates one pending job; the AFTER INSERT trigger wakes the workers on commit.
-- $1 num_images, $2 animal, $3 max_attempts
INSERT INTO jobs (num_images, animal, max_attempts)
VALUES ($1, $2, $3)
RETURNING jobs.*, ARRAY[]::integer[] AS image_indexes;

-- name: job_get
-- One job with the indexes of the images stored so far.
-- $1 id
SELECT j.*,
       ARRAY(SELECT i.idx FROM images i WHERE i.job_id = j.id ORDER BY i.idx) AS image_indexes
FROM jobs j
WHERE j.id = $1;

-- name: job_list
-- A page of jobs, newest first, strictly after the keyset cursor (created_at, id).
-- The first page passes a cursor after every job (the largest timestamp and uuid).
-- $1 cursor created_at, $2 cursor id, $3 limit
SELECT j.*,
       ARRAY(SELECT i.idx FROM images i WHERE i.job_id = j.id ORDER BY i.idx) AS image_indexes
FROM jobs j
WHERE (j.created_at, j.id) < ($1, $2)
ORDER BY j.created_at DESC, j.id DESC
LIMIT $3;

-- name: job_list_finished
-- Like job_list, only jobs in the finished status $1 (completed, failed or canceled). The
-- status is also spelled out as a list, so that even a generic plan (which cannot see $1)
-- knows jobs_finished_created_idx holds every row it wants.
-- $1 status, $2 cursor created_at, $3 cursor id, $4 limit
SELECT j.*,
       ARRAY(SELECT i.idx FROM images i WHERE i.job_id = j.id ORDER BY i.idx) AS image_indexes
FROM jobs j
WHERE j.status = $1 AND j.status IN ('completed', 'failed', 'canceled')
  AND (j.created_at, j.id) < ($2, $3)
ORDER BY j.created_at DESC, j.id DESC
LIMIT $4;

-- name: job_list_pending
-- Like job_list, only pending jobs: read through jobs_pending_idx (there are at most about
-- MAX_PENDING_JOBS of them), then sorted.
-- $1 cursor created_at, $2 cursor id, $3 limit
SELECT j.*,
       ARRAY(SELECT i.idx FROM images i WHERE i.job_id = j.id ORDER BY i.idx) AS image_indexes
FROM jobs j
WHERE j.status = 'pending' AND (j.created_at, j.id) < ($1, $2)
ORDER BY j.created_at DESC, j.id DESC
LIMIT $3;

-- name: job_list_processing
-- Like job_list, only processing jobs: a processing job always holds a lease, so they are
-- read through jobs_lease_idx (there are as many as the workers' slots), then sorted.
-- $1 cursor created_at, $2 cursor id, $3 limit
SELECT j.*,
       ARRAY(SELECT i.idx FROM images i WHERE i.job_id = j.id ORDER BY i.idx) AS image_indexes
FROM jobs j
WHERE j.status = 'processing' AND j.lease_expires_at IS NOT NULL
  AND (j.created_at, j.id) < ($1, $2)
ORDER BY j.created_at DESC, j.id DESC
LIMIT $3;

-- name: job_claim
-- Claims up to $2 due pending jobs, oldest first, for worker $1 in one statement;
-- SKIP LOCKED lets concurrent workers pass over each other's rows instead of waiting. Each
-- job comes with the images earlier attempts stored, so its handler resumes without asking.
-- $1 worker_id, $2 how many, $3 lease in seconds
UPDATE jobs
SET status = 'processing',
    worker_id = $1,
    attempts = jobs.attempts + 1,
    lease_expires_at = clock_timestamp() + make_interval(secs => $3),
    started_at = clock_timestamp(),
    updated_at = clock_timestamp()
FROM (
    SELECT id
    FROM jobs
    WHERE status = 'pending' AND run_at <= now()
    ORDER BY run_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AS due
WHERE jobs.id = due.id
RETURNING jobs.*,
          ARRAY(SELECT i.idx FROM images i WHERE i.job_id = jobs.id ORDER BY i.idx) AS image_indexes;

-- name: job_complete_many
-- Marks jobs completed, each only if worker $1 still owns that attempt of it; one statement
-- for all the jobs a worker finished in the last few milliseconds. Returns the ids completed.
-- Rows are locked in id order, as job_renew_leases does, so the two cannot deadlock.
-- $1 worker_id, $2 job ids (uuid[]), $3 their attempts (integer[], same order)
UPDATE jobs
SET status = 'completed',
    error = NULL,
    lease_expires_at = NULL,
    finished_at = clock_timestamp(),
    updated_at = clock_timestamp()
FROM (
    SELECT jobs.id
    FROM jobs JOIN unnest($2::uuid[], $3::integer[]) AS done (id, attempt)
      ON jobs.id = done.id AND jobs.attempts = done.attempt
    WHERE jobs.status = 'processing' AND jobs.worker_id = $1
    ORDER BY jobs.id
    FOR UPDATE OF jobs
) AS mine
WHERE jobs.id = mine.id
RETURNING jobs.id;

-- name: job_fail
-- Marks a job failed with a readable error, only if worker $2 still owns attempt $3 of it.
-- $1 id, $2 worker_id, $3 attempt, $4 error
UPDATE jobs
SET status = 'failed',
    error = $4,
    lease_expires_at = NULL,
    finished_at = clock_timestamp(),
    updated_at = clock_timestamp()
WHERE id = $1 AND status = 'processing' AND worker_id = $2 AND attempts = $3
RETURNING id;

-- name: job_retry
-- Puts a failed attempt back in the queue, due after $5 seconds, only if worker $2 still owns
-- attempt $3 of the job. The requeue trigger wakes the workers.
-- $1 id, $2 worker_id, $3 attempt, $4 error, $5 delay in seconds
UPDATE jobs
SET status = 'pending',
    error = $4,
    run_at = clock_timestamp() + make_interval(secs => $5),
    lease_expires_at = NULL,
    updated_at = clock_timestamp()
WHERE id = $1 AND status = 'processing' AND worker_id = $2 AND attempts = $3
RETURNING id;

-- name: job_hand_back
-- A stopping worker returns the jobs it did not finish, due now and without counting the
-- attempt, so another worker takes them at once (the requeue trigger wakes it). Locks rows in
-- id order, like job_complete_many and job_renew_leases.
-- $1 worker_id, $2 job ids (uuid[]), $3 their attempts (integer[], same order)
UPDATE jobs
SET status = 'pending',
    attempts = jobs.attempts - 1,
    run_at = clock_timestamp(),
    lease_expires_at = NULL,
    updated_at = clock_timestamp()
FROM (
    SELECT jobs.id
    FROM jobs JOIN unnest($2::uuid[], $3::integer[]) AS mine (id, attempt)
      ON jobs.id = mine.id AND jobs.attempts = mine.attempt
    WHERE jobs.status = 'processing' AND jobs.worker_id = $1
    ORDER BY jobs.id
    FOR UPDATE OF jobs
) AS handed
WHERE jobs.id = handed.id
RETURNING jobs.id;

-- name: job_renew_leases
-- Extends the leases of the jobs among $2 that worker $1 still owns; returns their ids
-- (a missing id was canceled or reclaimed). Locks rows in id order (see job_complete_many).
-- $1 worker_id, $2 job ids (uuid[]), $3 lease in seconds
UPDATE jobs
SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)
FROM (
    SELECT id FROM jobs
    WHERE id = ANY($2::uuid[]) AND status = 'processing' AND worker_id = $1
    ORDER BY id
    FOR UPDATE
) AS mine
WHERE jobs.id = mine.id
RETURNING jobs.id;

-- name: job_reclaim_expired
-- Jobs whose lease lapsed (their worker died or stalled) go back to pending, due now, or to
-- failed when they have used all their attempts. SKIP LOCKED: workers reclaim side by side.
-- $1 how many at most
UPDATE jobs
SET status = CASE WHEN jobs.attempts >= jobs.max_attempts THEN 'failed' ELSE 'pending' END,
    error = 'worker ' || jobs.worker_id || ' stopped renewing its lease (attempt '
            || jobs.attempts || ' of ' || jobs.max_attempts || ')',
    run_at = clock_timestamp(),
    lease_expires_at = NULL,
    finished_at = CASE WHEN jobs.attempts >= jobs.max_attempts THEN clock_timestamp() END,
    updated_at = clock_timestamp()
FROM (
    SELECT id
    FROM jobs
    WHERE status = 'processing' AND lease_expires_at < clock_timestamp()
    ORDER BY lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS expired
WHERE jobs.id = expired.id
RETURNING jobs.id, jobs.status, jobs.worker_id;

-- name: job_next_run_at
-- When the earliest pending job is due; NULL when none is pending.
SELECT min(run_at) FROM jobs WHERE status = 'pending';

-- name: job_cancel
-- Cancels a job that has not finished. A processing job's worker hears of it through the
-- cancel trigger's NOTIFY. Returns no row when the job is unknown or already finished.
-- $1 id
UPDATE jobs
SET status = 'canceled',
    lease_expires_at = NULL,
    finished_at = clock_timestamp(),
    updated_at = clock_timestamp()
WHERE id = $1 AND status IN ('pending', 'processing')
RETURNING id;

-- name: job_pending_count_capped
-- How many jobs are pending, counting no further than $1 (reads only the partial index).
-- $1 cap
SELECT count(*) FROM (SELECT 1 FROM jobs WHERE status = 'pending' LIMIT $1) AS capped;

-- name: job_queue_depth
-- Jobs pending and processing, and when the oldest due pending job fell due; reads only the
-- partial indexes, so it stays cheap however many finished jobs there are (a processing job
-- always holds a lease: the lease condition lets jobs_lease_idx serve the count).
SELECT (SELECT count(*) FROM jobs WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM jobs
        WHERE status = 'processing' AND lease_expires_at IS NOT NULL) AS processing,
       (SELECT min(run_at) FROM jobs WHERE status = 'pending' AND run_at <= now()) AS oldest_due,
       now() AS now;

-- name: job_insert_many
-- Creates many pending jobs in one statement: one commit, and one NOTIFY from the statement
-- trigger. The caller chooses the ids, so it can match rows to requests.
-- $1 ids (uuid[]), $2 num_images (integer[]), $3 animals (text[]), $4 max_attempts (integer[])
INSERT INTO jobs (id, num_images, animal, max_attempts)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::integer[])
RETURNING jobs.*, ARRAY[]::integer[] AS image_indexes;
