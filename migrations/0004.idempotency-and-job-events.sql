-- depends: 0002.leases-workers-cancel
-- Idempotency keys for POST /generations, and the NOTIFY that feeds event streams.

CREATE TABLE idempotency_keys (
    key         text PRIMARY KEY,
    fingerprint text NOT NULL,
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

COMMENT ON TABLE idempotency_keys IS 'Idempotency-Key headers of POST /generations, stored in the same transaction as their job';
COMMENT ON COLUMN idempotency_keys.fingerprint IS 'sha256 of the request body, canonicalised; the same key with another body is refused';
COMMENT ON COLUMN idempotency_keys.expires_at IS 'After this the key may be used again (IDEMPOTENCY_TTL)';

-- Every visible change of a job (status, an image stored, an error) NOTIFYs its id, so the
-- server's one LISTEN connection can wake the streams and waits of that job. Lease renewals
-- change neither status nor updated_at and stay silent. One NOTIFY per statement carries up
-- to 200 ids, comma-separated (a NOTIFY payload is limited to 8000 bytes).
CREATE FUNCTION jobs_notify_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menagerie_job_events', string_agg(id::text, ','))
    FROM (
        SELECT new_rows.id, (row_number() OVER () - 1) / 200 AS chunk
        FROM new_rows JOIN old_rows USING (id)
        WHERE new_rows.status IS DISTINCT FROM old_rows.status
           OR new_rows.updated_at IS DISTINCT FROM old_rows.updated_at
    ) AS changed
    GROUP BY chunk;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_changed
    AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_changed();
