-- Queries on the images table.

-- name: image_store
-- Stores one image, only while worker $2 still owns attempt $3 of the job. A newly stored
-- image is a change of the job: its version goes up, updated_at moves, and a `progress` event
-- says which image. Storing an image twice (a write retried after a lost connection) changes
-- nothing. Returns whether the worker still owned the job.
-- $1 job_id, $2 worker_id, $3 attempt, $4 idx, $5 png (the image's bytes), $6 sha256,
-- $7 content_type, $8 provider, $9 model, $10 provider_request_id, $11 latency_ms
WITH owned AS (
    SELECT id FROM job_queue WHERE id = $1 AND worker_id = $2 AND attempts = $3 FOR UPDATE
), stored AS (
    INSERT INTO images (job_id, idx, png, sha256, content_type, provider, model, provider_request_id, bytes, latency_ms)
    SELECT owned.id, $4, $5::bytea, $6, $7, $8, $9, $10, octet_length($5::bytea), $11 FROM owned
    ON CONFLICT (job_id, idx) DO NOTHING
    RETURNING job_id
), touched AS (
    UPDATE job_queue q SET updated_at = clock_timestamp(), version = q.version + 1
    FROM stored WHERE q.id = stored.job_id
    RETURNING q.id, q.version, q.watched
), recorded AS (
    SELECT job_events_add(array_agg(id), array_agg(version), array_agg('progress'::text), array_agg('processing'::text),
                          array_agg(jsonb_build_object('image', $4::integer)))
    FROM touched WHERE watched
)
SELECT EXISTS (SELECT FROM owned) AS owned FROM recorded;

-- name: image_get
-- One stored image with its type, of a generation key $3 owns, or of any when $3 is NULL (an
-- admin key, AUTH=none, or a signed URL).
-- $1 job_id, $2 idx, $3 viewer key id
SELECT i.png, i.sha256, i.content_type
FROM images i JOIN generations g ON g.job_id = i.job_id
WHERE i.job_id = $1 AND i.idx = $2 AND ($3::bigint IS NULL OR g.owner_key = $3);
