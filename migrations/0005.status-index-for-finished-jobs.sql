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
DROP INDEX jobs_status_created_idx;
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at DESC, id DESC)
    WHERE status IN ('completed', 'failed', 'canceled');
