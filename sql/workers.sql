-- Queries on the workers table.

-- name: worker_heartbeat
-- Records that a worker is alive and how many jobs it runs (creating its row if needed).
-- $1 id, $2 host, $3 pid, $4 concurrency, $5 running
INSERT INTO workers (id, host, pid, concurrency, running)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE
SET running = EXCLUDED.running, last_seen_at = clock_timestamp();

-- name: worker_delete
-- Removes a worker that stopped cleanly.
-- $1 id
DELETE FROM workers WHERE id = $1;

-- name: worker_delete_dead
-- Removes workers not seen for $1 seconds; returns their ids.
-- $1 seconds
DELETE FROM workers
WHERE last_seen_at < clock_timestamp() - make_interval(secs => $1)
RETURNING id;
