-- Queries on the images table. Each row says where its bytes are (store): in the row itself
-- (postgres: png) or in object storage (s3: the object `key`).

-- name: image_record
-- Records one image, only while worker $2 still owns attempt $3 of the job: the ownership
-- check, whatever the store (an s3 store wrote the object before; a postgres store's bytes
-- are $7). A newly stored image is a change of the job: its version goes up, updated_at
-- moves, and a `progress` event says which image. Recording an image twice (a write retried
-- after a lost connection) changes nothing. Returns whether the worker still owned the job.
-- $1 job_id, $2 worker_id, $3 attempt, $4 idx, $5 store, $6 key, $7 png, $8 size, $9 sha256,
-- $10 content_type, $11 provider, $12 model, $13 provider_request_id, $14 latency_ms
WITH owned AS (
    SELECT id FROM job_queue WHERE id = $1 AND worker_id = $2 AND attempts = $3 FOR UPDATE
), stored AS (
    INSERT INTO images (job_id, idx, store, key, png, size, sha256, content_type, provider, model,
                        provider_request_id, latency_ms)
    SELECT owned.id, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 FROM owned
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
-- One stored image, of a generation key $3 owns, or of any when $3 is NULL (an admin key,
-- AUTH=none, or a signed URL): where its bytes are, the bytes when they are in the row, and
-- its type.
-- $1 job_id, $2 idx, $3 viewer key id
SELECT i.store, i.key, i.png, coalesce(i.size, octet_length(i.png)) AS size, i.sha256, i.content_type
FROM images i JOIN generations g ON g.job_id = i.job_id
WHERE i.job_id = $1 AND i.idx = $2 AND ($3::bigint IS NULL OR g.owner_key = $3);

-- name: image_forget
-- Deletes the images of jobs that retention deleted; returns the store and object key of
-- those whose bytes are objects, to delete once this commits.
-- $1 job ids (uuid[])
WITH gone AS (DELETE FROM images WHERE job_id = ANY($1::uuid[]) RETURNING store, key)
SELECT store, key FROM gone WHERE key IS NOT NULL;

-- name: image_keys_known
-- Of these object keys, those an image row points at (the rest are orphans).
-- $1 keys (text[])
SELECT key FROM images WHERE key = ANY($1::text[]);

-- name: image_left_in
-- How many images, and how many bytes, a store holds.
-- $1 store
SELECT count(*) AS images, coalesce(sum(coalesce(size, octet_length(png))), 0)::bigint AS bytes
FROM images WHERE store = $1;

-- name: image_next_in
-- The next images of a store after ($2, $3) in key order, with their bytes: a batch to move.
-- $1 store, $2 after job_id, $3 after idx, $4 limit
SELECT job_id, idx, png, octet_length(png) AS size, sha256 FROM images
WHERE store = $1 AND (job_id, idx) > ($2, $3)
ORDER BY job_id, idx LIMIT $4;

-- name: image_moved
-- These images' bytes are now objects: the rows point at them and free their png. A row
-- already moved, or deleted meanwhile, is left alone. Returns how many rows moved.
-- $1 job ids (uuid[]), $2 idxs (integer[]), $3 keys (text[])
WITH moved AS (
    UPDATE images i SET store = 's3', key = m.key, size = octet_length(i.png), png = NULL
    FROM unnest($1::uuid[], $2::integer[], $3::text[]) AS m (job_id, idx, key)
    WHERE i.job_id = m.job_id AND i.idx = m.idx AND i.store = 'postgres'
    RETURNING 1
)
SELECT count(*) FROM moved;
