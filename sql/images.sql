-- Queries on the images table.

-- name: image_store
-- Stores one image, only while worker $2 still owns attempt $3 of the job; touches the
-- job's updated_at in the same statement. Returns whether the worker still owned the job.
-- $1 job_id, $2 worker_id, $3 attempt, $4 idx, $5 png, $6 sha256
WITH owned AS (
    UPDATE jobs
    SET updated_at = clock_timestamp()
    WHERE id = $1 AND status = 'processing' AND worker_id = $2 AND attempts = $3
    RETURNING id
), stored AS (
    INSERT INTO images (job_id, idx, png, sha256)
    SELECT owned.id, $4, $5, $6 FROM owned
    ON CONFLICT (job_id, idx) DO NOTHING
)
SELECT EXISTS (SELECT FROM owned) AS owned;

-- name: image_get
-- One stored image.
-- $1 job_id, $2 idx
SELECT png, sha256 FROM images WHERE job_id = $1 AND idx = $2;
