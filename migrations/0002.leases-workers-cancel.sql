-- depends: 0001.jobs-and-images
-- Workers that are alive, and the notifications that hand work back and stop canceled jobs.

CREATE TABLE workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    concurrency  integer NOT NULL,
    running      integer NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE workers IS 'Worker processes; a row whose last_seen_at is older than a few leases is dead and gets deleted';
COMMENT ON COLUMN workers.running IS 'Jobs it was running at its last heartbeat';
COMMENT ON COLUMN workers.last_seen_at IS 'Its last heartbeat (every third of a lease)';

-- A job that becomes pending again (a retry, a job handed back at shutdown, an expired lease)
-- wakes the workers like a new one. Identical notifications of one transaction collapse into
-- one, so handing back many jobs at once still costs one wake-up.
CREATE TRIGGER jobs_wake_workers_on_requeue
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status <> 'pending' AND NEW.status = 'pending')
    EXECUTE FUNCTION jobs_wake_workers();

-- A processing job that is canceled (by the API or by an operator's UPDATE in psql) tells the
-- worker running it, by id, so that it stops at once.
CREATE FUNCTION jobs_notify_canceled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menagerie_cancel', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_canceled
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status = 'processing' AND NEW.status = 'canceled')
    EXECUTE FUNCTION jobs_notify_canceled();
