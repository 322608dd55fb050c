CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_status_created_idx
    ON jobs (status, created_at DESC, id DESC)
    WHERE status <> 'pending';
DROP INDEX CONCURRENTLY IF EXISTS jobs_finished_created_idx;
