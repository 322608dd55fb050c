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

-- name: job_list_by_status
-- Like job_list, only jobs in status $1.
-- $1 status, $2 cursor created_at, $3 cursor id, $4 limit
SELECT j.*,
       ARRAY(SELECT i.idx FROM images i WHERE i.job_id = j.id ORDER BY i.idx) AS image_indexes
FROM jobs j
WHERE j.status = $1 AND (j.created_at, j.id) < ($2, $3)
ORDER BY j.created_at DESC, j.id DESC
LIMIT $4;

-- name: job_claim
-- Claims up to $2 due pending jobs, oldest first, for worker $1 in one statement;
-- SKIP LOCKED lets concurrent workers pass over each other's rows instead of waiting.
-- $1 worker_id, $2 how many, $3 lease in seconds
UPDATE jobs
SET status = 'processing',
    worker_id = $1,
    attempts = jobs.attempts + 1,
    lease_expires_at = clock_timestamp() + make_interval(secs => $3),
    started_at = clock_timestamp(),
    updated_at = clock_timestamp(),
    error = NULL
FROM (
    SELECT id
    FROM jobs
    WHERE status = 'pending' AND run_at <= now()
    ORDER BY run_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AS due
WHERE jobs.id = due.id
RETURNING jobs.*, ARRAY[]::integer[] AS image_indexes;

-- name: job_complete
-- Marks a job completed, only if worker $2 still owns attempt $3 of it.
-- $1 id, $2 worker_id, $3 attempt
UPDATE jobs
SET status = 'completed',
    lease_expires_at = NULL,
    finished_at = clock_timestamp(),
    updated_at = clock_timestamp()
WHERE id = $1 AND status = 'processing' AND worker_id = $2 AND attempts = $3
RETURNING id;

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
