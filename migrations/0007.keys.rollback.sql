DROP VIEW key_usage;
DELETE FROM idempotency_keys WHERE owner_key <> 0;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (key);
ALTER TABLE idempotency_keys DROP COLUMN owner_key;
ALTER TABLE generations DROP COLUMN owner_key;
DROP TABLE key_buckets;
DROP TABLE keys;
DROP TABLE server_secrets;
