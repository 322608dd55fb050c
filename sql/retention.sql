-- Deleting finished jobs once they are old (RETENTION_DAYS); app/retention.py names these.

-- name: retention_try_lock
-- Takes the retention lock for the current transaction, without waiting; false when another
-- worker holds it. Key 7301 (pg_locks: locktype 'advisory', objid 7301); it is released at
-- commit or rollback.
SELECT pg_try_advisory_xact_lock(7301);

-- name: retention_delete_finished
-- Deletes up to $2 jobs that reached completed, failed or canceled more than $1 days ago,
-- oldest first, with their images (ON DELETE CASCADE); SKIP LOCKED passes over rows another
-- transaction is changing. Returns the ids deleted.
-- $1 days (float), $2 how many at most
DELETE FROM jobs
USING (
    SELECT id
    FROM jobs
    WHERE status IN ('completed', 'failed', 'canceled')
      AND finished_at < now() - $1::float8 * interval '1 day'
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AS expired
WHERE jobs.id = expired.id
RETURNING jobs.id;

-- name: retention_delete_expired_keys
-- Forgets up to $1 Idempotency-Key records past their expiry (lookups already ignore them),
-- whatever RETENTION_DAYS says: they are no one's history. Returns how many it deleted.
-- $1 how many at most
WITH expired AS (
    DELETE FROM idempotency_keys
    WHERE key IN (
        SELECT key FROM idempotency_keys
        WHERE expires_at <= now()
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT count(*) FROM expired;
