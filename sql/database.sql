-- Queries about the database itself: the schema's migrations, a connection's health.

-- name: schema_applied_count
-- How many of the given migration ids yoyo has recorded as applied.
-- $1 migration ids (text[])
SELECT count(*) FROM _yoyo_migration WHERE migration_id = ANY($1::text[]);

-- name: ping
-- Proves a connection still answers.
SELECT 1;

-- name: rollback
-- Ends a transaction left open on a connection going back to the pool.
ROLLBACK;
