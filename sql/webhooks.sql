-- Webhooks (migration 0010): what a generation asked for (webhooks), and every attempt to
-- deliver (webhook_attempts). Deliveries themselves are jobs of kind webhook, enqueued by
-- webhook_outbox.

-- name: webhook_target
-- Where deliveries of job $1's changes go and what signs them: its webhook's URL, and the
-- webhook secrets of the key that owns the job (the old one only while it still signs;
-- NULLs for a job without a key, or a key without a secret). No row once the job is gone.
-- $1 job id
SELECT w.url, k.webhook_secret AS secret,
       CASE WHEN k.old_webhook_secret_until > now() THEN k.old_webhook_secret END AS old_secret
FROM webhooks w
JOIN generations g ON g.job_id = w.job_id
LEFT JOIN keys k ON k.id = g.owner_key
WHERE w.job_id = $1;


-- name: webhook_attempt_record
-- Records one attempt to deliver; nothing when the job is gone meanwhile.
-- $1 job id, $2 delivery id (the webhook job), $3 event, $4 sequence, $5 attempt, $6 started at,
-- $7 outcome, $8 status code, $9 error, $10 latency in ms
INSERT INTO webhook_attempts (job_id, delivery_id, event, sequence, attempt, at, outcome, status_code,
                              error, latency_ms)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
WHERE EXISTS (SELECT FROM webhooks WHERE job_id = $1);

-- name: webhook_attempt_list
-- Every attempt to deliver job $1's webhooks, oldest first.
-- $1 job id
SELECT delivery_id, event, sequence, attempt, at, outcome, status_code, error, latency_ms
FROM webhook_attempts WHERE job_id = $1 ORDER BY id;
