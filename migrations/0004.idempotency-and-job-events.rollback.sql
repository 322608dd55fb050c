DROP TRIGGER jobs_notify_changed ON jobs;
DROP FUNCTION jobs_notify_changed();
DROP TABLE idempotency_keys;
