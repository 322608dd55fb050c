-- transactional: false
-- depends: 0004.idempotency-and-job-events
-- The per-status listing index holds finished jobs only.
--
-- It held processing jobs too, and statements that find a processing job by id (completing,
-- failing, renewing a lease, storing an image) could be planned through it: its key starts
-- with the status, so such a lookup walked every 'processing' entry, including one for every
-- job completed since the last vacuum. Draining 20,000 jobs on a table not yet analyzed,
-- completions slowed from ~5 ms to ~60 ms per 500 jobs as the drain went on. Now nothing but
-- the primary key can find a processing row by id. Listing pending or processing jobs reads
-- jobs_pending_idx or jobs_lease_idx instead (they are few: see job_list_pending and
-- job_list_processing).
--
-- Built CONCURRENTLY, outside a transaction, so that upgrading a busy database does not
-- stop claims and completions while the index is built; the new index gets a new name, so
-- that running this again after an interruption is safe (an index left invalid by an
-- interrupted build is dropped first).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_index WHERE indexrelid = 'jobs_finished_created_idx'::regclass
               AND NOT indisvalid) THEN
        EXECUTE 'DROP INDEX jobs_finished_created_idx';
    END IF;
EXCEPTION WHEN undefined_table THEN NULL;
END
$$;
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_finished_created_idx
    ON jobs (status, created_at DESC, id DESC)
    WHERE status IN ('completed', 'failed', 'canceled');
DROP INDEX CONCURRENTLY IF EXISTS jobs_status_created_idx;
