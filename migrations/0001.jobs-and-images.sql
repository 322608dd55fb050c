-- Jobs, their images, and the NOTIFY that wakes workers.

CREATE TABLE jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    status           text NOT NULL DEFAULT 'pending'
                     CONSTRAINT jobs_status_known
                     CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'canceled')),
    num_images       integer NOT NULL CONSTRAINT jobs_num_images_positive CHECK (num_images >= 1),
    animal           text NOT NULL,
    error            text,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3,
    run_at           timestamptz NOT NULL DEFAULT now(),
    worker_id        text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT jobs_processing_has_owner
        CHECK (status <> 'processing' OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL))
);

COMMENT ON TABLE jobs IS 'One row per generation request; the queue itself.';
COMMENT ON COLUMN jobs.status IS 'pending -> processing -> completed | failed; canceled from pending or processing';
COMMENT ON COLUMN jobs.animal IS 'Chosen at creation, from the catalogue (GET /animals)';
COMMENT ON COLUMN jobs.error IS 'Why the last attempt failed, for people';
COMMENT ON COLUMN jobs.attempts IS 'Claims so far, including the one running now';
COMMENT ON COLUMN jobs.run_at IS 'Not claimed before this time (later than created_at for a retry)';
COMMENT ON COLUMN jobs.worker_id IS 'The worker that claimed it last (workers.id)';
COMMENT ON COLUMN jobs.lease_expires_at IS 'While processing: the claim lapses after this unless renewed';
COMMENT ON COLUMN jobs.started_at IS 'When the last attempt was claimed (database clock)';
COMMENT ON COLUMN jobs.finished_at IS 'When it reached completed, failed or canceled';

-- Claiming reads only pending rows, however many finished jobs pile up.
CREATE INDEX jobs_pending_idx ON jobs (run_at) WHERE status = 'pending';
-- Reclaiming reads only leased (processing) rows. The predicate is the lease, not the status,
-- on purpose: statements that complete or renew jobs by id then look them up by primary key,
-- instead of walking this index's entries for jobs completed since the last vacuum.
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
-- Listing, newest first (keyset pagination), all jobs or one status. The per-status index
-- leaves pending rows out: inserts stay cheaper, and the claim cannot mistake it for a better
-- path to pending jobs than jobs_pending_idx. Pending jobs are few and the newest, so listing
-- them walks jobs_created_idx.
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at DESC, id DESC)
    WHERE status <> 'pending';

CREATE TABLE images (
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx        integer NOT NULL CONSTRAINT images_idx_not_negative CHECK (idx >= 0),
    png        bytea NOT NULL,
    sha256     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, idx)
);

-- PNG is already compressed: store it out of line without trying to compress it again.
ALTER TABLE images ALTER COLUMN png SET STORAGE EXTERNAL;

COMMENT ON TABLE images IS 'Generated PNGs, served at /images/{job_id}/{idx}.png';
COMMENT ON COLUMN images.idx IS '0-based position of the image within its job';
COMMENT ON COLUMN images.sha256 IS 'Hex digest of png, the strong ETag';

-- A statement-level trigger: a bulk insert of many jobs costs one NOTIFY.
-- The payload is empty on purpose: a notification is a wake-up hint, never the queue.
CREATE FUNCTION jobs_wake_workers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menagerie_jobs', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_wake_workers_on_insert
    AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_wake_workers();
