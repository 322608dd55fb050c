-- depends: 0003.operator-views
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
-- change neither status nor updated_at and stay silent. A row trigger with a WHEN clause: a
-- statement trigger with transition tables cost 10-25 ms per 100-row claim or completion,
-- this costs next to nothing.
CREATE FUNCTION jobs_notify_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menagerie_job_events', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_changed
    AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.updated_at IS DISTINCT FROM NEW.updated_at)
    EXECUTE FUNCTION jobs_notify_changed();
