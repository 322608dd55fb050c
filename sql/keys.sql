-- Queries on keys, key_buckets and server_secrets: API keys, their token buckets, and the
-- secrets every server process shares.

-- name: secret_get_or_create
-- The secret named $1, made from $2 by the first caller. No row when another process created
-- it concurrently and its commit is not yet visible to this statement: the caller asks again.
-- $1 name, $2 value to store if there is none
WITH made AS (
    INSERT INTO server_secrets (name, value) VALUES ($1, $2)
    ON CONFLICT (name) DO NOTHING
    RETURNING value
)
SELECT value FROM made
UNION ALL
SELECT value FROM server_secrets WHERE name = $1;

-- name: key_create
-- Records a new key and fills its token bucket. Returns its id; a unique violation when a
-- live key has this name.
-- $1 name, $2 prefix, $3 hash, $4 admin, $5 rate, $6 burst, $7 max_pending (or NULL),
-- $8 webhook secret (its key bytes, or NULL)
WITH made AS (
    INSERT INTO keys (name, prefix, hash, admin, rate, burst, max_pending, webhook_secret)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING id, burst
), bucket AS (
    INSERT INTO key_buckets (key_id, tokens) SELECT id, burst FROM made
)
SELECT id FROM made;

-- name: key_list
-- Every key, live ones first, oldest first.
SELECT name, prefix, admin, rate, burst, max_pending, created_at, last_used_at, revoked_at
FROM keys
ORDER BY revoked_at IS NOT NULL, created_at, id;

-- name: key_revoke
-- Revokes the live key named $1; no row when there is none.
-- $1 name
UPDATE keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING prefix;

-- name: key_authenticate
-- The live key with hash $1; no row for an unknown or revoked one. Notes that it was used,
-- at most once a minute (so that most lookups write nothing).
-- $1 hash
WITH found AS (
    SELECT id, name, prefix, admin, rate, burst, max_pending, last_used_at,
           webhook_secret IS NOT NULL AS signs_webhooks
    FROM keys WHERE hash = $1 AND revoked_at IS NULL
), touched AS (
    UPDATE keys k SET last_used_at = now()
    FROM found f
    WHERE k.id = f.id AND (f.last_used_at IS NULL OR f.last_used_at < now() - interval '1 minute')
)
SELECT id, name, prefix, admin, rate, burst, max_pending, signs_webhooks FROM found;

-- name: key_live
-- The live key with id $1 (a stream token names its key by id); no row when revoked or unknown.
-- $1 key id
SELECT id, name, prefix, admin, rate, burst, max_pending, webhook_secret IS NOT NULL AS signs_webhooks
FROM keys WHERE id = $1 AND revoked_at IS NULL;

-- name: key_take_tokens
-- Refills key $1's bucket for the time since it was last refilled (at keys.rate per second,
-- up to keys.burst), then takes up to $2 whole tokens. Returns how many it took and the
-- tokens left (fractional). One row lock per call: server processes take tokens in batches.
-- $1 key id, $2 tokens wanted
WITH now AS (
    SELECT clock_timestamp() AS at
), filled AS (
    SELECT b.key_id,
           least(k.burst::double precision,
                 b.tokens + k.rate * greatest(0, extract(epoch FROM (SELECT at FROM now) - b.refilled_at)))
               AS tokens
    FROM key_buckets b JOIN keys k ON k.id = b.key_id
    WHERE b.key_id = $1
    FOR UPDATE OF b
), taken AS (
    UPDATE key_buckets b
    SET tokens = f.tokens - least(floor(f.tokens), $2), refilled_at = (SELECT at FROM now)
    FROM filled f
    WHERE b.key_id = f.key_id
    RETURNING least(floor(f.tokens), $2)::integer AS granted, b.tokens AS remaining
)
SELECT granted, remaining FROM taken;

-- name: key_bucket_restore
-- Gives key $1 a full bucket if it has none (key_buckets is unlogged: a crash empties it).
-- $1 key id
INSERT INTO key_buckets (key_id, tokens) SELECT id, burst FROM keys WHERE id = $1
ON CONFLICT (key_id) DO NOTHING;

-- name: key_pending_count
-- Generations of key $1 waiting to be claimed, counted no further than $2.
-- $1 key id, $2 cap
SELECT count(*) FROM (
    SELECT 1 FROM generations g JOIN job_queue q ON q.id = g.job_id
    WHERE g.owner_key = $1 AND q.worker_id IS NULL
    LIMIT $2
) waiting;

-- name: key_webhook_secret_rotate
-- Gives the live key named $1 a new webhook secret $2; the one it had keeps signing for $3
-- seconds. Returns the key's id; no row when no live key has that name.
-- $1 name, $2 new secret (its key bytes), $3 overlap in seconds
UPDATE keys
SET old_webhook_secret = webhook_secret,
    old_webhook_secret_until = CASE WHEN webhook_secret IS NULL THEN NULL
                                    ELSE now() + make_interval(secs => $3) END,
    webhook_secret = $2
WHERE name = $1 AND revoked_at IS NULL
RETURNING id;
