-- Queries on idempotency_keys. POST /generations with an Idempotency-Key runs
-- idempotency_get, then (in one transaction) job_insert and idempotency_claim.

-- name: idempotency_get
-- The live record of a key sent with API key $2 (0: none): its body fingerprint and job.
-- $1 key, $2 API key id
SELECT fingerprint, job_id FROM idempotency_keys WHERE owner_key = $2 AND key = $1 AND expires_at > now();

-- name: idempotency_claim
-- Records a key for a job just inserted in the same transaction, replacing an expired record.
-- Returns no row when a live record exists (a concurrent request won the race): the caller
-- rolls back its job and answers with the winner's.
-- $1 key, $2 fingerprint, $3 job_id, $4 ttl in seconds, $5 API key id (0: none)
INSERT INTO idempotency_keys (owner_key, key, fingerprint, job_id, expires_at)
VALUES ($5, $1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (owner_key, key) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint,
    job_id = EXCLUDED.job_id,
    created_at = now(),
    expires_at = EXCLUDED.expires_at
WHERE idempotency_keys.expires_at <= now()
RETURNING job_id;


-- name: idempotency_delete_expired
-- Forgets up to $1 records past their expiry (lookups already ignore them), whatever
-- RETENTION_DAYS says: they are no one's history. Returns how many it deleted.
-- $1 how many at most
WITH expired AS (
    DELETE FROM idempotency_keys
    WHERE (owner_key, key) IN (
        SELECT owner_key, key FROM idempotency_keys
        WHERE expires_at <= now()
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT count(*) FROM expired;
