DROP TRIGGER jobs_notify_canceled ON jobs;
DROP TRIGGER jobs_wake_workers_on_requeue ON jobs;
DROP FUNCTION jobs_notify_canceled();
DROP TABLE workers;
