DROP INDEX jobs_status_created_idx;
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at DESC, id DESC)
    WHERE status <> 'pending';
