-- depends: 0005.status-index-for-finished-jobs
-- One queue for every kind of job.
--
-- Work that is waiting or running lives in job_queue: a narrow table, one row per job, that
-- the claim reads through one partial index. It is split into three partitions that take
-- new jobs in turn; the maintenance loop moves the few rows left in the oldest partition
-- into the current one and TRUNCATEs it (job_queue_rotate). A truncated partition has no
-- dead rows at all, so an old snapshot (a long transaction anywhere in the cluster), which
-- stops VACUUM from removing anything, cannot pile up dead index entries under the claim.
--
-- A job's record is written twice more: when it is claimed (its job_queue row: worker,
-- attempt, started, lease) and when it ends (its job_queue row is deleted and its record
-- inserted into finished_jobs, in one statement). The view jobs shows both as one table.
--
-- What a job is about is the business of its kind: job_queue carries a kind, JSON args and
-- nothing else of it. Image generations (kind 'generate') keep theirs in generations.

CREATE TABLE job_queue_rotation (
    single     boolean PRIMARY KEY DEFAULT true CONSTRAINT job_queue_rotation_single CHECK (single),
    current    smallint NOT NULL DEFAULT 0 CONSTRAINT job_queue_rotation_known CHECK (current IN (0, 1, 2)),
    rotated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO job_queue_rotation DEFAULT VALUES;

COMMENT ON TABLE job_queue_rotation IS 'Which partition of job_queue takes new jobs (one row)';
COMMENT ON COLUMN job_queue_rotation.current IS 'New jobs go to job_queue_<current>';
COMMENT ON COLUMN job_queue_rotation.rotated_at IS 'When the oldest partition was last emptied and truncated';

CREATE FUNCTION job_queue_partition() RETURNS smallint
LANGUAGE sql STABLE AS $$ SELECT current FROM job_queue_rotation $$;

CREATE TABLE job_queue (
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    part             smallint NOT NULL DEFAULT job_queue_partition(),
    kind             text NOT NULL,
    priority         smallint NOT NULL DEFAULT 0,
    args             jsonb,
    watched          boolean NOT NULL DEFAULT false,
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3
                     CONSTRAINT job_queue_max_attempts_positive CHECK (max_attempts >= 1),
    worker_id        text,
    lease_expires_at timestamptz,
    started_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    error            text,
    version          integer NOT NULL DEFAULT 1,
    CONSTRAINT job_queue_running_has_lease CHECK ((worker_id IS NULL) = (lease_expires_at IS NULL)),
    PRIMARY KEY (id, part)
) PARTITION BY LIST (part);

CREATE TABLE job_queue_0 PARTITION OF job_queue FOR VALUES IN (0)
    WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
CREATE TABLE job_queue_1 PARTITION OF job_queue FOR VALUES IN (1)
    WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
CREATE TABLE job_queue_2 PARTITION OF job_queue FOR VALUES IN (2)
    WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

-- The claim's index: jobs of one kind, most urgent first. Running jobs stay in it (the claim
-- passes over them: a worker's few slots), so that claiming changes nothing indexed: with
-- half of each page kept free (fillfactor 50), a claim, a lease renewal and recording
-- progress are HOT updates, which write no index entry.
CREATE INDEX job_queue_due_idx ON job_queue (kind, priority DESC, run_at);

COMMENT ON TABLE job_queue IS
    'Jobs waiting (worker_id NULL) or running (worker_id set), of every kind; finished jobs move to finished_jobs. Read it through the view jobs.';
COMMENT ON COLUMN job_queue.id IS 'The job id (for generations, the jobId clients poll)';
COMMENT ON COLUMN job_queue.part IS 'Partition, see job_queue_rotation; rows move between partitions, ids never change';
COMMENT ON COLUMN job_queue.kind IS 'What the job does: the handler workers run it with (generate, ...)';
COMMENT ON COLUMN job_queue.priority IS 'Higher runs first among due jobs of its kind';
COMMENT ON COLUMN job_queue.args IS 'The job''s arguments, for kinds that keep them here (generations keep theirs in generations)';
COMMENT ON COLUMN job_queue.watched IS 'Its changes are recorded in job_events and announced to event streams';
COMMENT ON COLUMN job_queue.run_at IS 'Not claimed before this time (later than created_at for a retry)';
COMMENT ON COLUMN job_queue.attempts IS 'Claims so far, including the one running now';
COMMENT ON COLUMN job_queue.max_attempts IS 'Claims allowed before a retryable failure becomes final';
COMMENT ON COLUMN job_queue.worker_id IS 'The worker running it (workers.id); NULL while it waits';
COMMENT ON COLUMN job_queue.lease_expires_at IS 'While running: the claim lapses after this unless renewed';
COMMENT ON COLUMN job_queue.started_at IS 'When the current (or last) attempt was claimed, database clock';
COMMENT ON COLUMN job_queue.created_at IS 'When it was enqueued';
COMMENT ON COLUMN job_queue.updated_at IS 'Its last visible change (claim, retry, progress; renewing a lease does not count)';
COMMENT ON COLUMN job_queue.error IS 'Why the last attempt failed, while it waits for a retry';
COMMENT ON COLUMN job_queue.version IS 'Counts its changes: job_events.version of the last one';

CREATE TABLE finished_jobs (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL,
    status       text NOT NULL
                 CONSTRAINT finished_jobs_status_terminal CHECK (status IN ('completed', 'failed', 'canceled')),
    priority     smallint NOT NULL DEFAULT 0,
    args         jsonb,
    attempts     integer NOT NULL,
    max_attempts integer NOT NULL,
    worker_id    text,
    error        text,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    version      integer NOT NULL
);

-- Retention deletes the oldest first.
CREATE INDEX finished_jobs_finished_at_idx ON finished_jobs (finished_at);
-- Listing failed or canceled jobs of a kind, newest first. Completed jobs (nearly all of
-- them) stay out: finishing a job well costs no entry here, and a newest-first walk of the
-- kind's own records finds completed ones at once.
CREATE INDEX finished_jobs_unsuccessful_idx ON finished_jobs (kind, status, created_at DESC, id DESC)
    WHERE status <> 'completed';

COMMENT ON TABLE finished_jobs IS 'Jobs that completed, failed or were canceled, written once when they ended';
COMMENT ON COLUMN finished_jobs.status IS 'completed, failed or canceled: a job never leaves these';
COMMENT ON COLUMN finished_jobs.attempts IS 'Claims it took';
COMMENT ON COLUMN finished_jobs.worker_id IS 'The worker that ran its last attempt';
COMMENT ON COLUMN finished_jobs.error IS 'Why it failed, for people; NULL when completed';
COMMENT ON COLUMN finished_jobs.started_at IS 'When its last attempt was claimed (NULL if it never ran)';
COMMENT ON COLUMN finished_jobs.finished_at IS 'When it ended; retention deletes it RETENTION_DAYS later';

CREATE TABLE job_events (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  uuid NOT NULL,
    version integer NOT NULL,
    type    text NOT NULL,
    status  text NOT NULL,
    data    jsonb,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT job_events_one_per_version UNIQUE (job_id, version)
);

COMMENT ON TABLE job_events IS
    'Changes of watched jobs, in the order they happened: written by the statement that made the change, in its transaction';
COMMENT ON COLUMN job_events.id IS 'Increases with every event (assigned at insert: a concurrent transaction may commit a lower id a moment later)';
COMMENT ON COLUMN job_events.version IS 'The job''s version after this change: 1, 2, 3... per job';
COMMENT ON COLUMN job_events.type IS 'created, started, progress (the kind''s data says what), retrying, requeued, completed, failed, canceled';
COMMENT ON COLUMN job_events.status IS 'The job''s status after this change';
COMMENT ON COLUMN job_events.data IS 'What the kind adds, such as the index of a stored image';

-- Records events of watched jobs and announces the jobs on menagerie_job_events (ids, comma
-- separated, at most 200 per notification), delivered when the transaction commits. Every
-- statement that changes a watched job calls it with the jobs it changed.
CREATE FUNCTION job_events_add(ids uuid[], versions integer[], types text[], statuses text[], datas jsonb[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO job_events (job_id, version, type, status, data)
    SELECT e.job_id, e.version, e.type, e.status, e.data
    FROM unnest(ids, versions, types, statuses, coalesce(datas, array_fill(NULL::jsonb, ARRAY[cardinality(ids)])))
         AS e (job_id, version, type, status, data);
    PERFORM pg_notify('menagerie_job_events', array_to_string(ids[first:first + 199], ','))
    FROM generate_series(1, cardinality(ids), 200) AS first;
    RETURN cardinality(ids);
END
$$;

-- Wakes the workers of `kind` (NOTIFY menagerie_jobs, its name as payload, on commit): jobs of
-- that kind were enqueued or wait again. Statements call it once per kind they changed.
CREATE FUNCTION job_wake(kind text) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menagerie_jobs', kind);
    RETURN 1;
END
$$;

-- Creates jobs, one per array element, in the partition taking new jobs; wakes the workers
-- of each kind (one NOTIFY per kind, on commit) and records a `created` event for watched ones.
-- Returns each job's id and created_at. A function, so that a kind's own statement can
-- enqueue its jobs and write what they are about in one statement.
CREATE FUNCTION job_enqueue(ids uuid[], kinds text[], args jsonb[], priorities smallint[],
                            max_attempts integer[], watched boolean[], run_ats timestamptz[])
RETURNS TABLE (job_id uuid, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- PL/pgSQL, not SQL: its statement's plan is kept across calls in a session.
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO job_queue (id, part, kind, args, priority, max_attempts, watched, run_at)
        SELECT j.id, (SELECT current FROM job_queue_rotation), j.kind, j.args, j.priority,
               j.max_attempts, j.watched, coalesce(j.run_at, now())
        FROM unnest(ids, kinds, args, priorities, max_attempts, watched, run_ats)
             AS j (id, kind, args, priority, max_attempts, watched, run_at)
        RETURNING job_queue.id, job_queue.kind, job_queue.watched, job_queue.version, job_queue.created_at
    ), woken AS (
        SELECT sum(job_wake(k.kind)) AS kinds FROM (SELECT DISTINCT i.kind FROM inserted i) AS k
    ), recorded AS (
        SELECT job_events_add(array_agg(i.id), array_agg(i.version), array_agg('created'::text),
                              array_agg('pending'::text))
        FROM inserted i WHERE i.watched
    )
    SELECT i.id, i.created_at FROM inserted i, woken, recorded;
END
$$;

-- Ends a waiting or running job as canceled: its record moves to finished_jobs, a running
-- job's worker is told on menagerie_cancel (it stops the run; anything the run writes
-- afterwards is refused, since it no longer owns the job). Returns the status it had,
-- 'pending' or 'processing', or NULL when it was unknown or already finished.
CREATE FUNCTION job_cancel(job uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    gone job_queue;
BEGIN
    DELETE FROM job_queue WHERE id = job RETURNING * INTO gone;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO finished_jobs (id, kind, status, priority, args, attempts, max_attempts, worker_id,
                               error, created_at, started_at, finished_at, version)
    VALUES (gone.id, gone.kind, 'canceled', gone.priority, gone.args, gone.attempts, gone.max_attempts,
            gone.worker_id, NULL, gone.created_at, gone.started_at, clock_timestamp(), gone.version + 1);
    IF gone.watched THEN
        PERFORM job_events_add(ARRAY[gone.id], ARRAY[gone.version + 1], ARRAY['canceled'], ARRAY['canceled']);
    END IF;
    IF gone.worker_id IS NOT NULL THEN
        PERFORM pg_notify('menagerie_cancel', gone.id::text);
        RETURN 'processing';
    END IF;
    RETURN 'pending';
END
$$;

-- Empties the oldest partition of job_queue and makes it the one new jobs go to: its few
-- live rows (jobs still waiting or running from two rotations ago) move to the current
-- partition, then it is truncated. Called by the maintenance loop; does nothing (returns
-- NULL) when another session is rotating, when the last rotation is under min_interval old,
-- when the partitions hold fewer than min_dead dead rows (nothing to gain), when no
-- transaction has held back VACUUM's horizon for held_for (VACUUM then removes dead rows
-- itself, and a rotation would only pause the queue), or when more than max_move rows would
-- have to move (a backlog: tried again later). Otherwise returns how many rows moved. Holds the oldest partition's ACCESS EXCLUSIVE lock for the few
-- milliseconds this takes, and waits at most lock_wait for it: a long transaction that has
-- touched the partition makes the rotation give up (NULL), not the queue wait.
CREATE FUNCTION job_queue_rotate(max_move integer, min_dead bigint, min_interval interval,
                                 lock_wait interval, held_for interval)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    state job_queue_rotation;
    oldest smallint;
    oldest_table text;
    live integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7302) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO state FROM job_queue_rotation;
    IF state.rotated_at > clock_timestamp() - min_interval THEN
        RETURN NULL;
    END IF;
    IF (SELECT sum(pg_stat_get_dead_tuples(partition::oid))
        FROM unnest(ARRAY['job_queue_0'::regclass, 'job_queue_1'::regclass, 'job_queue_2'::regclass])
             AS partition) < min_dead THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_stat_activity
                   WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                     AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
                     AND xact_start < clock_timestamp() - held_for) THEN
        RETURN NULL;
    END IF;
    oldest := (state.current + 1) % 3;
    oldest_table := 'job_queue_' || oldest;
    PERFORM set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::bigint::text, true);
    BEGIN
        EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', oldest_table);
    EXCEPTION WHEN lock_not_available THEN
        RETURN NULL;
    END;
    EXECUTE format('SELECT count(*) FROM (SELECT FROM %I LIMIT %s) AS live', oldest_table, max_move + 1)
        INTO live;
    IF live > max_move THEN
        RETURN NULL;
    END IF;
    UPDATE job_queue SET part = state.current WHERE part = oldest;
    EXECUTE format('TRUNCATE %I', oldest_table);
    UPDATE job_queue_rotation SET current = oldest, rotated_at = clock_timestamp();
    RETURN live;
END
$$;

-- Image generations: what a 'generate' job is about. Rows live as long as their job.
CREATE TABLE generations (
    job_id     uuid PRIMARY KEY,
    animal     text NOT NULL,
    num_images integer NOT NULL CONSTRAINT generations_num_images_positive CHECK (num_images >= 1),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX generations_created_idx ON generations (created_at DESC, job_id DESC);

COMMENT ON TABLE generations IS 'What each generation job (kind generate) asks for; its status is in jobs';
COMMENT ON COLUMN generations.job_id IS 'The job (jobs.id), the jobId clients poll';
COMMENT ON COLUMN generations.animal IS 'Chosen at creation, from the catalogue (GET /animals)';
COMMENT ON COLUMN generations.num_images IS 'How many images the client asked for';
COMMENT ON COLUMN generations.created_at IS 'When the client created it (the job''s created_at)';

-- Move the existing jobs into the new tables.
INSERT INTO generations (job_id, animal, num_images, created_at)
SELECT id, animal, num_images, created_at FROM jobs;

INSERT INTO job_queue (id, part, kind, watched, run_at, attempts, max_attempts, worker_id,
                       lease_expires_at, started_at, created_at, updated_at, error)
SELECT id, 0, 'generate', true, run_at, attempts, max_attempts,
       CASE WHEN status = 'processing' THEN worker_id END,
       CASE WHEN status = 'processing' THEN lease_expires_at END,
       started_at, created_at, updated_at, error
FROM jobs WHERE status IN ('pending', 'processing');

INSERT INTO finished_jobs (id, kind, status, attempts, max_attempts, worker_id, error, created_at,
                           started_at, finished_at, version)
SELECT id, 'generate', status, attempts, max_attempts, worker_id, error, created_at, started_at,
       coalesce(finished_at, updated_at), 1
FROM jobs WHERE status IN ('completed', 'failed', 'canceled');

ALTER TABLE images DROP CONSTRAINT images_job_id_fkey;
ALTER TABLE images ADD CONSTRAINT images_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES generations (job_id) ON DELETE CASCADE;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_job_id_fkey;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES generations (job_id) ON DELETE CASCADE;

DROP VIEW live_workers;
DROP VIEW recent_failures;
DROP VIEW stuck_jobs;
DROP VIEW queue_summary;
DROP TABLE jobs;
DROP FUNCTION jobs_wake_workers();
DROP FUNCTION jobs_notify_canceled();
DROP FUNCTION jobs_notify_changed();

ALTER TABLE workers ADD COLUMN kinds text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN workers.kinds IS 'The kinds of job it runs (WORKER_KINDS)';
COMMENT ON COLUMN workers.concurrency IS 'How many jobs it runs at once at most (the slots of all its kinds)';

-- Every job, waiting, running or finished, as one table.
CREATE VIEW jobs AS
SELECT q.id, q.kind,
       CASE WHEN q.worker_id IS NULL THEN 'pending' ELSE 'processing' END AS status,
       q.priority, q.args, q.attempts, q.max_attempts, q.error, q.run_at, q.worker_id,
       q.lease_expires_at, q.created_at, q.updated_at, q.started_at, NULL::timestamptz AS finished_at,
       q.version
FROM job_queue q
UNION ALL
SELECT f.id, f.kind, f.status, f.priority, f.args, f.attempts, f.max_attempts, f.error,
       NULL::timestamptz, f.worker_id, NULL::timestamptz, f.created_at, f.finished_at, f.started_at,
       f.finished_at, f.version
FROM finished_jobs f;

COMMENT ON VIEW jobs IS
    'Every job: waiting and running ones from job_queue, finished ones from finished_jobs. '
    'UPDATE jobs SET status = ''canceled'' cancels; run_at and priority of a pending job may be changed.';

-- What an operator's UPDATE of the view does. Cancelling goes through job_cancel, like the
-- API's cancel, so a job canceled in psql is finished like any other (its worker stops, it is
-- kept RETENTION_DAYS). Only a pending job's run_at and priority can be changed besides.
CREATE FUNCTION jobs_view_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'canceled' AND OLD.status IN ('pending', 'processing') THEN
        PERFORM job_cancel(OLD.id);
        RETURN NEW;
    END IF;
    IF OLD.status = 'pending' AND NEW.status = 'pending'
       AND (NEW.id, NEW.kind, NEW.args, NEW.attempts, NEW.max_attempts, NEW.error, NEW.worker_id,
            NEW.created_at, NEW.version)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.kind, OLD.args, OLD.attempts, OLD.max_attempts, OLD.error, OLD.worker_id,
            OLD.created_at, OLD.version) THEN
        UPDATE job_queue SET run_at = NEW.run_at, priority = NEW.priority, updated_at = clock_timestamp()
        WHERE id = OLD.id AND worker_id IS NULL;
        PERFORM job_wake(OLD.kind);
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'jobs: this change is not one the queue can make'
        USING HINT = 'Cancel with UPDATE jobs SET status = ''canceled'' WHERE ...; a pending job''s run_at and priority may be changed; nothing else.';
END
$$;

CREATE TRIGGER jobs_view_update INSTEAD OF UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_view_update();

CREATE VIEW queue_summary AS
WITH kinds AS (SELECT kind FROM job_queue UNION SELECT kind FROM finished_jobs UNION SELECT unnest(kinds) FROM workers),
counts AS (
    SELECT kind, CASE WHEN worker_id IS NULL THEN 'pending' ELSE 'processing' END AS status,
           count(*) AS jobs, min(created_at) AS oldest_created_at,
           count(*) FILTER (WHERE worker_id IS NULL AND run_at <= now()) AS due,
           min(run_at) FILTER (WHERE worker_id IS NULL AND run_at <= now()) AS oldest_due
    FROM job_queue GROUP BY 1, 2
    UNION ALL
    SELECT kind, status, count(*), min(created_at), NULL, NULL FROM finished_jobs GROUP BY 1, 2
)
SELECT k.kind, s.status, coalesce(c.jobs, 0) AS jobs, c.oldest_created_at,
       now() - c.oldest_created_at AS oldest_age,
       CASE WHEN s.status = 'pending' THEN coalesce(c.due, 0) END AS due,
       CASE WHEN s.status = 'pending' THEN now() - c.oldest_due END AS longest_wait
FROM kinds k
CROSS JOIN (VALUES (1, 'pending'), (2, 'processing'), (3, 'completed'), (4, 'failed'), (5, 'canceled'))
     AS s (position, status)
LEFT JOIN counts c ON c.kind = k.kind AND c.status = s.status
ORDER BY k.kind, s.position;

COMMENT ON VIEW queue_summary IS
    'One row per kind (every kind with jobs or a worker) and status, zero jobs included: how '
    'many, the oldest, and for pending how many are due and how long the head of the queue has '
    'waited since it fell due';

CREATE VIEW stuck_jobs AS
SELECT id, kind, CASE WHEN worker_id IS NULL THEN 'pending' ELSE 'processing' END AS status,
       attempts, worker_id, started_at, lease_expires_at,
       now() - CASE WHEN worker_id IS NOT NULL THEN started_at ELSE run_at END AS waiting_or_running,
       CASE
           WHEN worker_id IS NULL THEN 'due for over a minute and not claimed'
           WHEN lease_expires_at < now() THEN 'lease expired, not yet reclaimed'
           ELSE 'running for over 5 minutes'
       END AS reason
FROM job_queue
WHERE (worker_id IS NOT NULL AND (lease_expires_at < now() OR started_at < now() - interval '5 minutes'))
   OR (worker_id IS NULL AND run_at < now() - interval '1 minute')
ORDER BY waiting_or_running DESC;

COMMENT ON VIEW stuck_jobs IS
    'Jobs that need a look: running with a lapsed lease or for over 5 minutes (the default '
    'JOB_TIMEOUT), pending and due for over a minute (no worker is taking work)';

CREATE VIEW recent_failures AS
SELECT id, kind, 'failed' AS outcome, status, attempts, max_attempts, error, finished_at,
       finished_at AS updated_at
FROM finished_jobs WHERE status = 'failed'
UNION ALL
SELECT id, kind, 'retrying', CASE WHEN worker_id IS NULL THEN 'pending' ELSE 'processing' END,
       attempts, max_attempts, error, NULL, updated_at
FROM job_queue WHERE error IS NOT NULL
ORDER BY updated_at DESC, id;

COMMENT ON VIEW recent_failures IS
    'Failed jobs, and unfinished jobs whose last attempt failed (outcome retrying), newest '
    'first; add LIMIT';

CREATE VIEW live_workers AS
SELECT w.id, w.host, w.pid, w.kinds, w.running, w.concurrency, w.started_at, w.last_seen_at,
       round(extract(epoch FROM now() - w.last_seen_at), 1) AS seconds_since_heartbeat,
       (SELECT count(*) FROM job_queue q WHERE q.worker_id = w.id) AS processing_jobs
FROM workers w
WHERE w.last_seen_at > now() - interval '90 seconds'
ORDER BY w.started_at, w.id;

COMMENT ON VIEW live_workers IS
    'Workers heard from in the last 90 seconds (three leases of the default 30 s), with the '
    'kinds they run and the jobs they hold now';
