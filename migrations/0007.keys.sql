-- depends: 0006.general-queue
-- API keys: who may call the API, what each key owns, and how fast it may go.
--
-- A key is shown once when it is made (`menagerie keys create NAME`); only its keyed hash
-- (HMAC-SHA256 under the server secret 'key_hash') is stored, so the table alone does not let
-- anyone call the API. A generation belongs to the key that created it (generations.owner_key);
-- jobs made before keys were turned on, or with AUTH=none, have no owner and only admin keys
-- see them.

CREATE TABLE server_secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE server_secrets IS 'Random secrets every server process shares, each created once by the first process that needs it';
COMMENT ON COLUMN server_secrets.name IS 'key_hash: the HMAC key of keys.hash; image_url: signs image URLs (unless IMAGE_URL_SECRET is set)';
COMMENT ON COLUMN server_secrets.value IS '32 random bytes; changing key_hash invalidates every key';

CREATE TABLE keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL CONSTRAINT keys_name_valid CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    prefix       text NOT NULL,
    hash         bytea NOT NULL CONSTRAINT keys_hash_unique UNIQUE,
    admin        boolean NOT NULL DEFAULT false,
    rate         double precision NOT NULL CONSTRAINT keys_rate_positive CHECK (rate > 0),
    burst        integer NOT NULL CONSTRAINT keys_burst_positive CHECK (burst >= 1),
    max_pending  integer CONSTRAINT keys_max_pending_positive CHECK (max_pending >= 1),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX keys_live_name_idx ON keys (name) WHERE revoked_at IS NULL;

COMMENT ON TABLE keys IS 'API keys (menagerie keys create|list|revoke); the key itself is never stored';
COMMENT ON COLUMN keys.name IS 'Who the key is for; unique among live keys, so a revoked name can be given a new key';
COMMENT ON COLUMN keys.prefix IS 'The first characters of the key (mng_ and 8 more): what logs and keys list show';
COMMENT ON COLUMN keys.hash IS 'HMAC-SHA256 of the key under server_secrets key_hash: requests are matched by it';
COMMENT ON COLUMN keys.admin IS 'Sees and cancels every job, those of other keys and those with no owner';
COMMENT ON COLUMN keys.rate IS 'Requests per second the key may make on average (token bucket refill)';
COMMENT ON COLUMN keys.burst IS 'Requests the key may make at once above its rate (token bucket size)';
COMMENT ON COLUMN keys.max_pending IS 'Pending generations the key may have at once; NULL: only the global MAX_PENDING_JOBS';
COMMENT ON COLUMN keys.last_used_at IS 'Last time a server looked the key up (at most a few seconds stale)';
COMMENT ON COLUMN keys.revoked_at IS 'When it was revoked; every server refuses it within 5 seconds of that';

-- Unlogged: taking tokens writes no WAL, so its commit waits for no disk flush. After a crash
-- the table is empty, and a key's bucket comes back full at its next request.
CREATE UNLOGGED TABLE key_buckets (
    key_id      bigint PRIMARY KEY REFERENCES keys (id) ON DELETE CASCADE,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (fillfactor = 50);

COMMENT ON TABLE key_buckets IS 'Each key''s token bucket, shared by every server process (they take tokens from it in small batches); unlogged: emptied by a crash, refilled at the next request';
COMMENT ON COLUMN key_buckets.tokens IS 'Tokens left at refilled_at; refilled at keys.rate per second up to keys.burst when next taken';

-- No foreign key: keys are revoked, never deleted, and its check would lock the key's row
-- (FOR KEY SHARE) for every job created, shared by all the key's concurrent requests.
ALTER TABLE generations ADD COLUMN owner_key bigint;
CREATE INDEX generations_owner_idx ON generations (owner_key, created_at DESC, job_id DESC)
    WHERE owner_key IS NOT NULL;
COMMENT ON COLUMN generations.owner_key IS 'The key that created it (keys.id); NULL: made without a key, only admin keys see it';

-- Idempotency-Key is scoped per API key: two keys using the same one get two jobs.
ALTER TABLE idempotency_keys ADD COLUMN owner_key bigint NOT NULL DEFAULT 0;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (owner_key, key);
COMMENT ON COLUMN idempotency_keys.owner_key IS 'The API key (keys.id) that sent it; 0 without a key (AUTH=none)';

CREATE VIEW key_usage AS
SELECT k.name, k.prefix, k.admin, k.revoked_at IS NOT NULL AS revoked,
       count(*) FILTER (WHERE j.status = 'pending') AS pending,
       count(*) FILTER (WHERE j.status = 'processing') AS processing,
       count(*) FILTER (WHERE j.status = 'completed') AS completed,
       count(*) FILTER (WHERE j.status = 'failed') AS failed,
       count(*) FILTER (WHERE j.status = 'canceled') AS canceled,
       count(j.id) AS jobs, k.last_used_at
FROM keys k
LEFT JOIN generations g ON g.owner_key = k.id AND g.created_at > now() - interval '24 hours'
LEFT JOIN jobs j ON j.id = g.job_id
GROUP BY k.id
ORDER BY jobs DESC, k.name;

COMMENT ON VIEW key_usage IS 'Generations each key created in the last 24 hours, by status now (one row per key)';
