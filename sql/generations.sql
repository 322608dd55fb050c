-- Image generations (jobs of the generation kinds: generate, generate-openai,
-- generate-openrouter, one per provider) as the API and the generation handler see them: what
-- was asked for (generations), the job's status (the view jobs, or job_queue and
-- finished_jobs directly where an index of theirs serves) and the images stored so far with
-- their types (generation_images).

-- name: generation_create_many
-- Creates generation jobs in one statement: their queue jobs (of their provider's kind,
-- watched; one NOTIFY per kind), what each asks for, the key that owns each, and the webhook of those that name
-- one (its deliveries are enqueued by the statements that change the job, see
-- webhook_outbox). Returns (job_id, created_at) of each.
-- $1 job ids (uuid[]), $2 animals (text[]), $3 num_images (integer[]), $4 max_attempts (integer[]),
-- $5 owner keys (bigint[], NULL elements for none), $6 webhook URLs (text[], NULL: none),
-- $7 their events (text[], comma lists), $8 attempts each delivery gets (integer[]),
-- $9 kinds (text[]), $10 prompts (text[]), $11 providers (text[]), $12 models (text[])
WITH created AS (
    SELECT job_id, created_at
    FROM job_enqueue($1::uuid[], $9::text[],
                     array_fill(NULL::jsonb, ARRAY[cardinality($1::uuid[])]),
                     array_fill(0::smallint, ARRAY[cardinality($1::uuid[])]), $4::integer[],
                     array_fill(true, ARRAY[cardinality($1::uuid[])]),
                     array_fill(NULL::timestamptz, ARRAY[cardinality($1::uuid[])]))
), described AS (
    INSERT INTO generations (job_id, animal, num_images, created_at, owner_key, prompt, provider, model)
    SELECT c.job_id, g.animal, g.num_images, c.created_at, g.owner_key, g.prompt, g.provider, g.model
    FROM created c
    JOIN unnest($1::uuid[], $2::text[], $3::integer[], $5::bigint[], $10::text[], $11::text[], $12::text[])
         AS g (job_id, animal, num_images, owner_key, prompt, provider, model)
      ON g.job_id = c.job_id
    RETURNING job_id
), hooked AS (
    INSERT INTO webhooks (job_id, url, events, max_attempts)
    SELECT d.job_id, h.url, string_to_array(h.events, ','), h.max_attempts
    FROM described d JOIN unnest($1::uuid[], $6::text[], $7::text[], $8::integer[])
                          AS h (job_id, url, events, max_attempts)
      ON h.job_id = d.job_id
    WHERE h.url IS NOT NULL
)
SELECT job_id, created_at FROM created;

-- name: generation_get
-- One generation with its job's status and the indexes of the images stored so far.
-- Only a generation key $2 owns, or any when $2 is NULL (an admin key, or AUTH=none).
-- $1 job id, $2 viewer key id
SELECT g.job_id AS id, j.status, g.num_images, g.animal, j.error, j.attempts, j.created_at,
       j.updated_at, j.started_at, j.finished_at,
       g.prompt, g.provider, g.model, im.image_indexes, im.image_types,
       w.url AS webhook, w.events AS webhook_events
FROM generations g JOIN jobs j ON j.id = g.job_id LEFT JOIN webhooks w ON w.job_id = g.job_id
CROSS JOIN LATERAL generation_images(g.job_id) AS im
WHERE g.job_id = $1 AND ($2::bigint IS NULL OR g.owner_key = $2);

-- name: generation_for_run
-- What the generation handler needs to run a claimed job: the request (prompt and model
-- included), and the images an earlier attempt already stored (kept, not made again).
-- $1 job id
SELECT g.animal, g.num_images, g.prompt, g.provider, g.model, im.image_indexes
FROM generations g
CROSS JOIN LATERAL generation_images(g.job_id) AS im
WHERE g.job_id = $1;

-- name: generation_list
-- A page of generations, newest first, strictly after the keyset cursor (created_at, id).
-- The first page passes a cursor after every job (the largest timestamp and uuid). Every
-- key's (an admin key, or AUTH=none); generation_list_owned lists one key's.
-- $1 cursor created_at, $2 cursor id, $3 limit
SELECT g.job_id AS id, j.status, g.num_images, g.animal, j.error, j.attempts, j.created_at,
       j.updated_at, j.started_at, j.finished_at,
       g.prompt, g.provider, g.model, im.image_indexes, im.image_types,
       w.url AS webhook, w.events AS webhook_events
FROM generations g JOIN jobs j ON j.id = g.job_id LEFT JOIN webhooks w ON w.job_id = g.job_id
CROSS JOIN LATERAL generation_images(g.job_id) AS im
WHERE (g.created_at, g.job_id) < ($1, $2)
ORDER BY g.created_at DESC, g.job_id DESC
LIMIT $3;

-- name: generation_list_completed
-- Like generation_list, completed generations only: walks all generations newest first and
-- keeps the completed ones, which are nearly all of them.
-- $1 cursor created_at, $2 cursor id, $3 limit
SELECT g.job_id AS id, f.status, g.num_images, g.animal, f.error, f.attempts, f.created_at,
       f.finished_at AS updated_at, f.started_at, f.finished_at,
       g.prompt, g.provider, g.model, im.image_indexes, im.image_types,
       w.url AS webhook, w.events AS webhook_events
FROM generations g JOIN finished_jobs f ON f.id = g.job_id LEFT JOIN webhooks w ON w.job_id = g.job_id
CROSS JOIN LATERAL generation_images(g.job_id) AS im
WHERE f.status = 'completed' AND (g.created_at, g.job_id) < ($1, $2)
ORDER BY g.created_at DESC, g.job_id DESC
LIMIT $3;

-- name: generation_list_owned
-- Like generation_list, only the generations of key $4: read through generations_owner_idx,
-- so a key with few jobs among many is not found by walking everyone's.
-- $1 cursor created_at, $2 cursor id, $3 limit, $4 owner key id
SELECT g.job_id AS id, j.status, g.num_images, g.animal, j.error, j.attempts, j.created_at,
       j.updated_at, j.started_at, j.finished_at,
       g.prompt, g.provider, g.model, im.image_indexes, im.image_types,
       w.url AS webhook, w.events AS webhook_events
FROM generations g JOIN jobs j ON j.id = g.job_id LEFT JOIN webhooks w ON w.job_id = g.job_id
CROSS JOIN LATERAL generation_images(g.job_id) AS im
WHERE g.owner_key = $4 AND (g.created_at, g.job_id) < ($1, $2)
ORDER BY g.created_at DESC, g.job_id DESC
LIMIT $3;

-- name: generation_list_completed_owned
-- Like generation_list_completed, only the generations of key $4 (generations_owner_idx).
-- $1 cursor created_at, $2 cursor id, $3 limit, $4 owner key id
SELECT g.job_id AS id, f.status, g.num_images, g.animal, f.error, f.attempts, f.created_at,
       f.finished_at AS updated_at, f.started_at, f.finished_at,
       g.prompt, g.provider, g.model, im.image_indexes, im.image_types,
       w.url AS webhook, w.events AS webhook_events
FROM generations g JOIN finished_jobs f ON f.id = g.job_id LEFT JOIN webhooks w ON w.job_id = g.job_id
CROSS JOIN LATERAL generation_images(g.job_id) AS im
WHERE g.owner_key = $4 AND f.status = 'completed' AND (g.created_at, g.job_id) < ($1, $2)
ORDER BY g.created_at DESC, g.job_id DESC
LIMIT $3;

-- name: generation_list_unsuccessful
-- Like generation_list, only generations that ended in status $1 (failed or canceled): read
-- through finished_jobs_unsuccessful_idx, a page of each generation kind $6 (one per
-- provider), then merged. The status is also spelled out as a condition, so that even a
-- generic plan (which cannot see $1) knows that index holds every row it wants.
-- $1 status, $2 cursor created_at, $3 cursor id, $4 limit, $5 viewer key id,
-- $6 generation kinds (text[])
SELECT g.job_id AS id, f.status, g.num_images, g.animal, f.error, f.attempts, f.created_at,
       f.finished_at AS updated_at, f.started_at, f.finished_at,
       g.prompt, g.provider, g.model, im.image_indexes, im.image_types,
       w.url AS webhook, w.events AS webhook_events
FROM unnest($6::text[]) AS k (kind)
CROSS JOIN LATERAL (
    SELECT f.id
    FROM finished_jobs f JOIN generations g ON g.job_id = f.id
    WHERE f.kind = k.kind AND f.status = $1 AND f.status <> 'completed'
      AND (f.created_at, f.id) < ($2, $3) AND ($5::bigint IS NULL OR g.owner_key = $5)
    ORDER BY f.created_at DESC, f.id DESC
    LIMIT $4
) AS page
JOIN finished_jobs f ON f.id = page.id
JOIN generations g ON g.job_id = page.id
LEFT JOIN webhooks w ON w.job_id = g.job_id
CROSS JOIN LATERAL generation_images(g.job_id) AS im
ORDER BY f.created_at DESC, f.id DESC
LIMIT $4;

-- name: generation_list_waiting
-- Like generation_list, only generations whose job waits ($1 false: pending) or runs ($1 true:
-- processing). There are few of those (at most about MAX_PENDING_JOBS, and the workers'
-- slots): they are read from job_queue, then sorted.
-- $1 running, $2 cursor created_at, $3 cursor id, $4 limit, $5 viewer key id,
-- $6 generation kinds (text[])
SELECT g.job_id AS id, CASE WHEN q.worker_id IS NULL THEN 'pending' ELSE 'processing' END AS status,
       g.num_images, g.animal, q.error, q.attempts, q.created_at, q.updated_at, q.started_at,
       NULL::timestamptz AS finished_at,
       g.prompt, g.provider, g.model, im.image_indexes, im.image_types,
       w.url AS webhook, w.events AS webhook_events
FROM job_queue q JOIN generations g ON g.job_id = q.id LEFT JOIN webhooks w ON w.job_id = g.job_id
CROSS JOIN LATERAL generation_images(g.job_id) AS im
WHERE q.kind = ANY($6::text[]) AND (q.worker_id IS NOT NULL) = $1
  AND (q.created_at, q.id) < ($2, $3) AND ($5::bigint IS NULL OR g.owner_key = $5)
ORDER BY q.created_at DESC, q.id DESC
LIMIT $4;

-- name: generation_at_version
-- A generation as it was right after its change number $2 (job_events.version): the status
-- that change left, the images stored by then, the attempt then running and the last error
-- by then; a finished job's own record once the change ended it (a job never changes after).
-- updatedAt and startedAt are the times of the recorded events. What a webhook delivery
-- reports. No row when the job or that change is unknown.
-- $1 job id, $2 version
SELECT g.job_id AS id, e.status, g.num_images, g.animal,
       CASE WHEN f.id IS NOT NULL THEN f.error
            ELSE (SELECT x.data ->> 'error' FROM job_events x
                  WHERE x.job_id = $1 AND x.version <= $2 AND x.data ? 'error'
                  ORDER BY x.version DESC LIMIT 1) END AS error,
       CASE WHEN f.id IS NOT NULL THEN f.attempts
            ELSE coalesce((s.data ->> 'attempt')::integer, 0) END AS attempts,
       g.created_at,
       CASE WHEN f.id IS NOT NULL THEN f.finished_at ELSE e.at END AS updated_at,
       CASE WHEN f.id IS NOT NULL THEN f.started_at ELSE s.at END AS started_at,
       f.finished_at,
       g.prompt, g.provider, g.model,
       ARRAY(SELECT (p.data ->> 'image')::integer FROM job_events p
             WHERE p.job_id = $1 AND p.version <= $2 AND p.type = 'progress' AND p.data ? 'image'
             ORDER BY 1) AS image_indexes,
       ARRAY(SELECT coalesce(i.content_type, 'image/png') FROM job_events p
             LEFT JOIN images i ON i.job_id = $1 AND i.idx = (p.data ->> 'image')::integer
             WHERE p.job_id = $1 AND p.version <= $2 AND p.type = 'progress' AND p.data ? 'image'
             ORDER BY (p.data ->> 'image')::integer) AS image_types,
       w.url AS webhook, w.events AS webhook_events
FROM generations g
JOIN job_events e ON e.job_id = g.job_id AND e.version = $2
LEFT JOIN finished_jobs f ON f.id = g.job_id AND e.status IN ('completed', 'failed', 'canceled')
LEFT JOIN LATERAL (SELECT x.data, x.at FROM job_events x
                   WHERE x.job_id = $1 AND x.version <= $2 AND x.type = 'started'
                   ORDER BY x.version DESC LIMIT 1) AS s ON true
LEFT JOIN webhooks w ON w.job_id = g.job_id
WHERE g.job_id = $1;

-- name: generation_forget
-- Deletes the generations of jobs that retention deleted, with their images (ON DELETE
-- CASCADE) and Idempotency-Key records.
-- $1 job ids (uuid[])
DELETE FROM generations WHERE job_id = ANY($1::uuid[]);

-- name: generation_cancel
-- Cancels a generation's job if it waits or runs (see the job_cancel function): the status
-- it had, or NULL when the generation is unknown or already finished. Only generations: an id
-- of another kind of job is unknown here, and so is one key $2 does not own (unless $2 is NULL).
-- $1 job id, $2 viewer key id
SELECT job_cancel(job_id) FROM generations WHERE job_id = $1 AND ($2::bigint IS NULL OR owner_key = $2);

-- name: generation_events_after
-- Job events after id $1, in id order, at most $2, of every kind (a follower needs every id
-- to tell a gap from another kind's event); for generations, the job as it is now (id NULL
-- for other kinds, and for generations key $3 does not own unless $3 is NULL); and the
-- snapshot they were read under (see job_events_settled).
-- $1 event id, $2 limit, $3 viewer key id
SELECT e.id AS event_id, e.type, g.job_id AS id, j.status, g.num_images, g.animal, j.error,
       j.attempts, j.created_at, j.updated_at, j.started_at, j.finished_at,
       g.prompt, g.provider, g.model, im.image_indexes, im.image_types,
       w.url AS webhook, w.events AS webhook_events,
       pg_current_snapshot()::text AS snapshot
FROM job_events e
LEFT JOIN generations g ON g.job_id = e.job_id AND ($3::bigint IS NULL OR g.owner_key = $3)
LEFT JOIN jobs j ON j.id = g.job_id
LEFT JOIN LATERAL generation_images(g.job_id) AS im ON g.job_id IS NOT NULL
LEFT JOIN webhooks w ON w.job_id = g.job_id
WHERE e.id > $1
ORDER BY e.id
LIMIT $2;

-- name: generation_history
-- Every recorded change of a generation, oldest first: type, status after it, what it adds
-- (jsonb as text: an attempt's number, an image's index, an error) and when. No rows for an
-- unknown job, another kind's, or one key $2 does not own (unless $2 is NULL).
-- $1 job id, $2 viewer key id
SELECT e.type, e.status, e.data::text AS data, e.at
FROM job_events e JOIN generations g ON g.job_id = e.job_id
WHERE e.job_id = $1 AND ($2::bigint IS NULL OR g.owner_key = $2)
ORDER BY e.version;
