-- depends: 0006.general-queue
-- Images from HTTP models (OpenAI's images API, OpenRouter) beside the local renderer.
--
-- A generation keeps what it was created with: the prompt sent, the provider and the model
-- (IMAGE_PROVIDER, IMAGE_MODEL and IMAGE_PROMPT_TEMPLATE when it was created). Its job's kind
-- names the provider too (generate: local, generate-openai, generate-openrouter): a worker
-- claims only the kind of the provider it was started with, so changing IMAGE_PROVIDER never
-- mixes models in one job. Each image records where it came from, its type and what it cost.

ALTER TABLE generations
    ADD COLUMN prompt text,
    ADD COLUMN provider text NOT NULL DEFAULT 'local'
        CONSTRAINT generations_provider_known CHECK (provider IN ('local', 'openai', 'openrouter')),
    ADD COLUMN model text;

COMMENT ON COLUMN generations.prompt IS
    'The text sent to the model (IMAGE_PROMPT_TEMPLATE with the animal); NULL for generations made before providers existed';
COMMENT ON COLUMN generations.provider IS 'What makes its images: local (the renderer), openai or openrouter; fixed at creation';
COMMENT ON COLUMN generations.model IS 'The model asked for (IMAGE_MODEL at creation); NULL for the local renderer';

ALTER TABLE images
    ADD COLUMN content_type text NOT NULL DEFAULT 'image/png'
        CONSTRAINT images_content_type_known CHECK (content_type IN ('image/png', 'image/jpeg', 'image/webp')),
    ADD COLUMN provider text,
    ADD COLUMN model text,
    ADD COLUMN provider_request_id text,
    ADD COLUMN latency_ms integer;

COMMENT ON TABLE images IS
    'Generated images, served at /images/{job_id}/{idx}.{png|jpg|webp} (the extension follows content_type)';
COMMENT ON COLUMN images.png IS 'The image as the provider sent it (PNG, JPEG or WebP: see content_type)';
COMMENT ON COLUMN images.content_type IS 'image/png, image/jpeg or image/webp, as Pillow read the bytes';
COMMENT ON COLUMN images.provider IS 'The provider that made it (local, openai, openrouter); NULL for images made before providers existed';
COMMENT ON COLUMN images.model IS 'The model that made it; NULL for the local renderer';
COMMENT ON COLUMN images.provider_request_id IS 'The provider''s id of the call (x-request-id, a completion id) when it sent one';
COMMENT ON COLUMN images.latency_ms IS 'How long the provider call took, download included, in milliseconds';

-- A generation's stored images, for its job JSON: their indexes and types, in index order
-- (an image's URL ends in the extension of its type). Inlined by the planner into the
-- statements that read it (sql/generations.sql).
CREATE FUNCTION generation_images(job uuid) RETURNS TABLE (image_indexes integer[], image_types text[])
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(i.idx ORDER BY i.idx), '{}'), coalesce(array_agg(i.content_type ORDER BY i.idx), '{}')
    FROM images i WHERE i.job_id = job
$$;
