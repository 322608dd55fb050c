-- depends: 0006.general-queue
-- Images in object storage: each image row says where its bytes are.
--
-- `postgres`: the bytes are the row's png, as before. `s3`: they are an object of the bucket
-- (S3_BUCKET) under `key`, and png is NULL. Switching IMAGE_STORE changes where new images
-- go; old rows keep saying where theirs are, so they keep serving. `menagerie images
-- move-to-s3` turns postgres rows into s3 ones.

ALTER TABLE images
    ADD COLUMN store text NOT NULL DEFAULT 'postgres'
        CONSTRAINT images_store_known CHECK (store IN ('postgres', 's3')),
    ADD COLUMN key text,
    ADD COLUMN size integer;

-- No backfill (no rewrite of a large table): a row in PostgreSQL knows its size from png.
ALTER TABLE images
    ALTER COLUMN png DROP NOT NULL,
    ADD CONSTRAINT images_bytes_where_the_store_says CHECK (
        (store = 'postgres' AND png IS NOT NULL AND key IS NULL)
        OR (store = 's3' AND png IS NULL AND key IS NOT NULL AND size IS NOT NULL)
    );

-- The orphan sweep asks which listed objects have a row; no two rows share an object.
CREATE UNIQUE INDEX images_key_idx ON images (key) WHERE key IS NOT NULL;

COMMENT ON COLUMN images.png IS 'The bytes, when store = postgres; NULL when they are in object storage';
COMMENT ON COLUMN images.store IS 'Where the bytes are: postgres (png) or s3 (the object `key` of S3_BUCKET)';
COMMENT ON COLUMN images.key IS 'The object key when store = s3: {S3_PREFIX}{job_id}/{idx}.{attempt} (attempt 0: moved from postgres)';
COMMENT ON COLUMN images.size IS 'Size of the image in bytes; NULL for rows written before 0009 (octet_length(png))';
