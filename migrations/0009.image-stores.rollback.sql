-- Back to bytes in rows only: refused while any image lives in object storage, which this
-- cannot bring back (no image is ever lost to a rollback).
DO $$
BEGIN
    IF EXISTS (SELECT FROM images WHERE store <> 'postgres') THEN
        RAISE EXCEPTION 'images are in object storage: they cannot be rolled back into PostgreSQL';
    END IF;
END
$$;

DROP INDEX images_key_idx;
ALTER TABLE images DROP CONSTRAINT images_bytes_where_the_store_says;
ALTER TABLE images ALTER COLUMN png SET NOT NULL;
ALTER TABLE images DROP COLUMN size, DROP COLUMN key, DROP COLUMN store;
COMMENT ON COLUMN images.png IS NULL;
