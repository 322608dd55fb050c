DROP FUNCTION generation_images(uuid);
ALTER TABLE images
    DROP COLUMN latency_ms,
    DROP COLUMN provider_request_id,
    DROP COLUMN model,
    DROP COLUMN provider,
    DROP COLUMN content_type;
COMMENT ON TABLE images IS 'Generated PNGs, served at /images/{job_id}/{idx}.png';
COMMENT ON COLUMN images.png IS NULL;
ALTER TABLE generations
    DROP COLUMN model,
    DROP COLUMN provider,
    DROP COLUMN prompt;
