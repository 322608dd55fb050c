DROP TABLE images;
DROP TABLE jobs;
DROP FUNCTION jobs_notify_inserted();
