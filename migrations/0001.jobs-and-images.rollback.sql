DROP TABLE images;
DROP TABLE jobs;
DROP FUNCTION jobs_wake_workers();
