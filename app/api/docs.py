"""What each endpoint documents in the OpenAPI document: parameters, bodies, every status
with an example. Attached to the endpoints in app/api.py with `@documented(...)`."""

from __future__ import annotations

from app.api.models import (
    EXAMPLE_DELIVERY,
    EXAMPLE_JOB,
    EXAMPLE_QUEUE,
    MAX_BODY_BYTES,
    MAX_IDEMPOTENCY_KEY,
    MAX_WAIT_SECONDS,
    GenerationRequest,
    JobOut,
    ListQuery,
    MomentOut,
    QueueOut,
    WebhookAttemptOut,
    WebhookDeliveryOut,
)
from app.api.openapi import Header, Operation, Param, Reply
from app.queue.kinds import Status as JobStatus

UUID_SCHEMA = {"type": "string"}
LIST_QUERY = {
    name: {key: value for key, value in schema.items() if key != "title"}
    for name, schema in ListQuery.model_json_schema()["properties"].items()
}
"""The query parameters' schemas, as ListQuery validates them."""
JOB_ID = Param(
    "job_id",
    "path",
    "The job's id (a UUID; anything else is simply not found)",
    UUID_SCHEMA,
    "6f1c0d0e-3b0a-4c5e-9a43-1d2b8f0c7a11",
)
PREFER = Param(
    "Prefer",
    "header",
    f"`wait=N` (N ≤ {MAX_WAIT_SECONDS}), e.g. `wait=5`: answer once the job is terminal, or after N seconds",
    {"type": "string"},
)
IF_NONE_MATCH = Param(
    "If-None-Match", "header", "An ETag from an earlier answer: 304 if unchanged", {"type": "string"}
)
REQUEST_ID = Header("Echoed X-Request-ID, or one made for this request", "4bf92f3577b34da6a3ce929d0e0e4736")
JOB_ETAG = Header("Strong validator of this representation of the job", '"6b1c0f5e9d1f3c0a2e7b8d9c0a1b2c3d"')
LOCATION = Header("Where the job can be read", "/generations/6f1c0d0e-3b0a-4c5e-9a43-1d2b8f0c7a11")
APPLIED = Header("Present when `Prefer: wait` was honoured", "wait=5")
RETRY_AFTER = Header("Seconds to wait before retrying", "1", {"type": "string", "pattern": "^[0-9]+$"})

NOT_FOUND = Reply("No such job", problems={"about:blank": "no such job"})
UNAVAILABLE = Reply(
    "The database is unavailable (or, for POST, too much work is queued)",
    problems={"about:blank": "the database is unavailable; try again shortly"},
    headers={"Retry-After": RETRY_AFTER},
)
JOB_REPLY = Reply(
    "The job", model=JobOut, example=EXAMPLE_JOB, headers={"ETag": JOB_ETAG, "X-Request-ID": REQUEST_ID}
)
NOT_MODIFIED = Reply("The job has not changed since the ETag sent", headers={"ETag": JOB_ETAG})

CREATE_GENERATION = Operation(
    summary="Create a generation job",
    description=(
        "Queues a job for `numImages` images of an animal and answers at once with the pending "
        "job. Send `Idempotency-Key` to make retries safe, `Prefer: wait=N` to wait for the "
        "result."
    ),
    params=(
        Param(
            "Idempotency-Key",
            "header",
            f"Retrying with the same key and body returns the same job; 1–{MAX_IDEMPOTENCY_KEY} "
            "characters, e.g. a UUID the client makes once per order",
            {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
        ),
        PREFER,
    ),
    body=GenerationRequest,
    body_examples={"three images": {"numImages": 3}, "a chosen animal": {"numImages": 2, "animal": "owl"}},
    replies={
        202: Reply(
            "Accepted: the job (completed already when `Prefer: wait` allowed it)",
            model=JobOut,
            example={
                **EXAMPLE_JOB,
                "status": "pending",
                "imageUrls": [],
                "attempts": 0,
                "startedAt": None,
                "finishedAt": None,
            },
            headers={
                "Location": LOCATION,
                "ETag": JOB_ETAG,
                "Idempotent-Replayed": Header("`true` when this is the job an earlier request made", "true"),
                "Preference-Applied": APPLIED,
                "X-Request-ID": REQUEST_ID,
            },
        ),
        400: Reply(
            "The body is not a JSON object, or the Idempotency-Key is malformed",
            problems={"/problems/invalid-json": "the body must be a JSON object"},
        ),
        413: Reply(
            f"The body is over {MAX_BODY_BYTES // 1024} KiB",
            problems={"about:blank": f"the body must be at most {MAX_BODY_BYTES} bytes"},
        ),
        415: Reply("The body is not JSON", problems={"about:blank": "send the body as application/json"}),
        422: Reply(
            "A field is missing, of the wrong type or out of range, or the Idempotency-Key was "
            "used with another body",
            problems={
                "/problems/validation-error": "numImages: Input should be less than or equal to 10",
                "/problems/idempotency-key-reused": "this Idempotency-Key was already used with a different body",
            },
        ),
        429: Reply(
            "The key already has its limit of pending jobs (`keys create --max-pending`)",
            problems={
                "/problems/too-many-pending": "this key already has 5 pending jobs, its limit; try again "
                "when some have started"
            },
            headers={"Retry-After": RETRY_AFTER},
        ),
        503: Reply(
            "Too much work is queued (MAX_PENDING_JOBS), or the database is unavailable",
            problems={
                "/problems/queue-full": "10000 or more jobs are waiting; try again later",
                "about:blank": "the database is unavailable; try again shortly",
            },
            headers={"Retry-After": RETRY_AFTER},
        ),
    },
)

GET_GENERATION = Operation(
    summary="Read a job",
    description="The job as it is now; with `Prefer: wait=N`, once it is terminal or after N seconds.",
    params=(JOB_ID, PREFER, IF_NONE_MATCH),
    replies={
        200: Reply(
            JOB_REPLY.description,
            model=JobOut,
            example=EXAMPLE_JOB,
            headers={**JOB_REPLY.headers, "Preference-Applied": APPLIED},
        ),
        304: NOT_MODIFIED,
        404: NOT_FOUND,
        503: UNAVAILABLE,
    },
)

LIST_GENERATIONS = Operation(
    summary="List jobs, newest first",
    description=(
        'A page of jobs. When there are more, a `Link: <…>; rel="next"` header gives the next '
        "page's URL. Unknown query parameters are ignored."
    ),
    params=(
        Param("limit", "query", "Jobs per page", LIST_QUERY["limit"], 20),
        Param(
            "status",
            "query",
            "Only jobs in this status",
            {"type": "string", "enum": [status.value for status in JobStatus]},
            "completed",
        ),
        Param(
            "cursor",
            "query",
            "Where the page starts: copy it from a `next` link; any other value is a 422",
            {"type": "string"},
        ),
    ),
    replies={
        200: Reply(
            "The page of jobs",
            model=JobOut,
            many=True,
            example=[EXAMPLE_JOB],
            headers={
                "Link": Header(
                    "The next page, when there is one",
                    '<http://localhost:8000/generations?limit=20&cursor=WyIy…>; rel="next"',
                ),
                "X-Request-ID": REQUEST_ID,
            },
        ),
        422: Reply(
            "A query parameter is invalid",
            problems={
                "/problems/validation-error": f"limit: Input should be less than or equal to {LIST_QUERY['limit']['maximum']}"
            },
        ),
        503: UNAVAILABLE,
    },
)

CANCEL_GENERATION = Operation(
    summary="Cancel a job",
    description=(
        "A pending job is canceled at once; a processing one is stopped on its worker within a "
        "second. Canceling a canceled job again is harmless."
    ),
    params=(JOB_ID,),
    replies={
        200: Reply(
            "The canceled job",
            model=JobOut,
            example={**EXAMPLE_JOB, "status": "canceled", "imageUrls": EXAMPLE_JOB["imageUrls"][:1]},
            headers={"ETag": JOB_ETAG, "X-Request-ID": REQUEST_ID},
        ),
        404: NOT_FOUND,
        409: Reply(
            "The job already completed or failed",
            problems={
                "/problems/job-finished": "the job already completed; only pending or processing jobs can be canceled"
            },
        ),
        503: UNAVAILABLE,
    },
)

JOB_EVENTS = Operation(
    summary="Follow a job as Server-Sent Events",
    description=(
        "One `job` event with the job at once, then `status` and `image` events as it changes "
        "(each carrying the whole job as JSON), closed after a terminal status. Comments keep "
        "idle streams open. Reconnect with `Last-Event-ID` to be sent only what was missed."
    ),
    params=(
        JOB_ID,
        Param("Last-Event-ID", "header", "The id of the last event received", {"type": "string"}),
    ),
    replies={
        200: Reply(
            "The event stream; each event's data is the whole job",
            content={
                "text/event-stream": {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string", "enum": ["job", "status", "image"]},
                        "id": {"type": "string", "pattern": "^[a-z]+\\.[0-9]+$"},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/JobOut"},
                        },
                    },
                    "required": ["event", "id", "data"],
                }
            },
            example=(
                'event: job\nid: pending.0\ndata: {"jobId": "6f1c…", "status": "pending", …}\n\n'
                "event: status\nid: processing.0\ndata: {…}\n\n"
                "event: image\nid: processing.1\ndata: {…}\n\n"
                "event: status\nid: completed.2\ndata: {…}\n\n"
            ),
        ),
        404: NOT_FOUND,
        503: UNAVAILABLE,
    },
)

JOB_HISTORY = Operation(
    summary="A job's history",
    description=(
        "Every recorded change of the job, oldest first: its creation, each attempt's start, "
        "each image stored, each failed attempt and why, and how it ended."
    ),
    params=(JOB_ID,),
    replies={
        200: Reply(
            "The changes, oldest first",
            model=MomentOut,
            many=True,
            example=[
                {
                    "type": "created",
                    "status": "pending",
                    "data": None,
                    "at": "2026-11-27T10:30:00.123456+00:00",
                },
                {
                    "type": "started",
                    "status": "processing",
                    "data": {"attempt": 1},
                    "at": "2026-11-27T10:30:00.125002+00:00",
                },
                {
                    "type": "retrying",
                    "status": "pending",
                    "data": {"error": "provider timed out", "runAt": "2026-11-27T10:30:02.1+00:00"},
                    "at": "2026-11-27T10:30:01.2+00:00",
                },
            ],
        ),
        404: NOT_FOUND,
        503: UNAVAILABLE,
    },
)

CHANGE_TYPES = ["created", "started", "progress", "retrying", "requeued", "completed", "failed", "canceled"]

ALL_EVENTS = Operation(
    summary="Follow every job as Server-Sent Events",
    description=(
        "One stream for all jobs (a page holds one connection, not one per job). First a `ready` "
        "event, its id the position the stream starts from (`resumed`: whether the client gave "
        "one). Then one event per change to a job, named after the change (`created`, "
        "`started`, `progress` for each image stored, `retrying`, `requeued`, `completed`, "
        "`failed`, `canceled`), its data the whole job as it is when sent; changes of one job "
        "read together are sent as the last of them. Event ids are durable and increasing: "
        "reconnect with `Last-Event-ID` (or `?lastEventId=`), even after a server restart, "
        "to be sent every change after that one, none twice; a client drops any event whose "
        "id is not above the last it applied. An event with only an id may move the position "
        "past other kinds' jobs. Comments keep idle streams open; the stream never ends by "
        "itself."
    ),
    params=(
        Param(
            "Last-Event-ID",
            "header",
            "The id of the last event applied: resume after it",
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
        ),
        Param(
            "lastEventId",
            "query",
            "The same, for a client that cannot send headers (a new EventSource); the header wins",
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
        ),
        Param(
            "token",
            "query",
            "With AUTH=keys, instead of an Authorization header: a token from POST /generations/events/token",
            {"type": "string"},
        ),
    ),
    replies={
        200: Reply(
            "The event stream; each change's data is the whole job",
            content={
                "text/event-stream": {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string", "enum": ["ready", *CHANGE_TYPES]},
                        "id": {"type": "string", "pattern": "^[0-9]+$"},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/JobOut"},
                                    {
                                        "type": "object",
                                        "properties": {"resumed": {"type": "boolean"}},
                                        "required": ["resumed"],
                                    },
                                ]
                            },
                        },
                    },
                    "required": ["event", "id", "data"],
                }
            },
            example=(
                'event: ready\nid: 41\ndata: {"resumed": false}\n\n'
                'event: created\nid: 42\ndata: {"jobId": "6f1c…", "status": "pending", …}\n\n'
                "event: started\nid: 43\ndata: {…}\n\n"
                "event: progress\nid: 45\ndata: {…}\n\n"
                "event: completed\nid: 47\ndata: {…}\n\n"
            ),
        ),
        422: Reply(
            "The event id is not one this service issued",
            problems={"/problems/validation-error": "Last-Event-ID: not an event id this service issued"},
        ),
        503: UNAVAILABLE,
    },
)

STREAM_TOKEN = Operation(
    summary="A token to open the event stream",
    description=(
        "With AUTH=keys: a token, valid `expiresIn` seconds (STREAM_TOKEN_TTL), that opens "
        "`GET /generations/events?token=…` for this key, since a browser's EventSource cannot "
        "send an Authorization header. A stream opened with it stays open after it expires; "
        "a reconnection after that needs a new token. With AUTH=none there is nothing to "
        "issue (404)."
    ),
    replies={
        200: Reply(
            "The token",
            content={
                "application/json": {
                    "type": "object",
                    "properties": {"token": {"type": "string"}, "expiresIn": {"type": "integer"}},
                    "required": ["token", "expiresIn"],
                }
            },
            example={"token": "7.1796035460.kq3Z0nF8m1VY2x5yR0cT1Q", "expiresIn": 60},
        ),
        404: Reply(
            "The server asks for no key (AUTH=none)",
            problems={"about:blank": "no token is needed: this server asks for no key (AUTH=none)"},
        ),
        503: UNAVAILABLE,
    },
)

QUEUE = Operation(
    summary="The queue at a glance",
    tag="operations",
    description=(
        "Read-only: per kind of job, how many wait, run and are due, and how long the head of "
        "the queue has waited (the view queue_summary); the workers heard from in the last "
        "90 s (live_workers); jobs that failed, or failed an attempt and will be retried, in "
        "the last hour (recent_failures)."
    ),
    replies={
        200: Reply("The queue now", model=QueueOut, example=EXAMPLE_QUEUE),
        403: Reply(
            "The key is not an admin key (the queue counts every client's jobs)",
            problems={"/problems/admin-only": "only an admin key may read the queue"},
        ),
        503: UNAVAILABLE,
    },
)

GET_IMAGE = Operation(
    summary="Download an image",
    tag="images",
    description=(
        "An image listed in a job's `imageUrls`, as the provider made it: PNG, JPEG or WebP, served "
        "with its type, at a URL whose extension follows the type (`.png`, `.jpg`, `.webp`; "
        "another extension is a 404). Immutable: cache it forever. With API keys, "
        "the URLs in `imageUrls` are signed (`expires`, `sig`) so that a browser's `<img>` "
        "needs no key; without a signature the job's key (or an admin key) is needed. An "
        "expired or altered signature is a 404. Served `Cache-Control: private` with keys."
    ),
    params=(
        JOB_ID,
        Param(
            "name",
            "path",
            "`{index}.{png|jpg|webp}`, the index counting from 0 and the extension of the image's type",
            {"type": "string"},
            "0.png",
        ),
        IF_NONE_MATCH,
        Param(
            "expires",
            "query",
            "From a signed URL in `imageUrls`: when it expires (Unix time)",
            {"type": "string"},
        ),
        Param("sig", "query", "From a signed URL in `imageUrls`: its signature", {"type": "string"}),
    ),
    signed=True,
    replies={
        200: Reply(
            "The image",
            content={
                kind: {"type": "string", "contentMediaType": kind}
                for kind in ("image/png", "image/jpeg", "image/webp")
            },
            headers={
                "ETag": Header(
                    "sha256 of the image",
                    '"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
                ),
                "Cache-Control": Header(
                    "Immutable; private with API keys", "private, max-age=31536000, immutable"
                ),
            },
        ),
        304: Reply("Not modified", headers={"ETag": Header("sha256 of the PNG", '"9f86…"')}),
        307: Reply(
            "With IMAGE_DELIVERY=redirect, for an image kept in object storage: fetch it from the "
            "bucket, at a presigned URL valid for S3_PRESIGN_TTL seconds",
            headers={
                "Location": Header("The presigned URL", "https://bucket.s3.amazonaws.com/images/…?X-Amz-…"),
                "Cache-Control": Header("Half the URL's life", "private, max-age=1800"),
            },
        ),
        404: Reply("No such image", problems={"about:blank": "no such image"}),
        503: Reply(
            "The database, or the object store holding the image, is unavailable",
            problems={
                "about:blank": "the database is unavailable; try again shortly",
                "/problems/store-unavailable": "the image store is unavailable; try again shortly (…)",
            },
            headers={"Retry-After": RETRY_AFTER},
        ),
    },
)

LIST_WEBHOOK_ATTEMPTS = Operation(
    summary="List a job's webhook delivery attempts",
    description=(
        "Every attempt to deliver the job's webhooks, oldest first: its `webhookId` (the same "
        "on every retry of one delivery), event, sequence number, outcome, the receiver's "
        "status or the error, and how long it took. Empty for a job without a webhook, or "
        "before the first attempt."
    ),
    params=(JOB_ID,),
    replies={
        200: Reply(
            "The attempts",
            model=WebhookAttemptOut,
            many=True,
            example=[
                {
                    "webhookId": "msg_2b7f4c1e9a0d4e6f8b3c5d7e9f1a2b3c",
                    "event": "completed",
                    "sequence": 1,
                    "attempt": 1,
                    "at": "2026-11-27T10:30:04.460000+00:00",
                    "outcome": "retrying",
                    "statusCode": 500,
                    "error": "the receiver answered 500",
                    "latencyMs": 12.5,
                },
                {
                    "webhookId": "msg_2b7f4c1e9a0d4e6f8b3c5d7e9f1a2b3c",
                    "event": "completed",
                    "sequence": 1,
                    "attempt": 2,
                    "at": "2026-11-27T10:30:09.480000+00:00",
                    "outcome": "delivered",
                    "statusCode": 200,
                    "error": None,
                    "latencyMs": 8.1,
                },
            ],
            headers={"X-Request-ID": REQUEST_ID},
        ),
        404: NOT_FOUND,
        503: UNAVAILABLE,
    },
)

LIST_ANIMALS = Operation(
    summary="The animal catalogue",
    tag="catalogue",
    description="The animals a job may ask for; without one, a job gets one of these at random.",
    replies={
        200: Reply(
            "Animal names",
            content={"application/json": {"type": "array", "items": {"type": "string"}}},
            example=["bear", "cat", "dog"],
        )
    },
)

STATUS_SCHEMA = {
    "type": "object",
    "properties": {"status": {"type": "string"}},
    "required": ["status"],
}

READY_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "imageStore": {"type": "string", "enum": ["postgres", "s3"]},
    },
    "required": ["status", "imageStore"],
}

HEALTHZ = Operation(
    public=True,
    summary="Liveness",
    tag="operations",
    description="The process is up (it does not touch the database).",
    replies={200: Reply("Up", content={"application/json": STATUS_SCHEMA}, example={"status": "ok"})},
)

READYZ = Operation(
    public=True,
    summary="Readiness",
    tag="operations",
    description=(
        "The database answers and its schema is migrated, and the image store new images go to "
        "(`imageStore`: `postgres` or `s3`) answers."
    ),
    replies={
        200: Reply(
            "Ready",
            content={"application/json": READY_SCHEMA},
            example={"status": "ready", "imageStore": "s3"},
        ),
        503: Reply(
            "Not ready",
            problems={
                "about:blank": "the database schema is not migrated",
                "/problems/store-unavailable": "the image store is unavailable; try again shortly (…)",
            },
            headers={"Retry-After": RETRY_AFTER},
        ),
    },
)

METRICS = Operation(
    public=True,
    summary="Prometheus metrics",
    tag="operations",
    description=(
        "This server process's requests by route and status, their latency, open event "
        "streams, and the queue's depth and oldest pending age."
    ),
    replies={
        200: Reply(
            "Prometheus text exposition format",
            content={"text/plain": {"type": "string"}},
            example='menagerie_queue_jobs{status="pending"} 3.0\n',
        )
    },
)

WEBHOOK_DELIVERY = Operation(
    summary="A job changed (sent to the job's webhook)",
    tag="webhooks",
    public=True,  # a request menagerie makes: no API key; the signature is its proof
    description=(
        "POSTed to the `webhook` a job was created with, for each change it asked for in "
        "`webhookEvents`: the job as it was right after the change, with `event` and a per-job "
        "`sequence` number. Signed per Standard Webhooks (https://www.standardwebhooks.com/): "
        "`webhook-signature` holds `v1,` and the base64 HMAC-SHA256 of "
        "`{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of the "
        "secret after `whsec_`: the webhook secret of the job's API key (`menagerie keys "
        "create`), else the server's WEBHOOK_SECRET (several space-separated signatures while "
        "a secret is rotated: accept the request when any matches). Verify with a Standard Webhooks library, reject "
        "timestamps more than 5 minutes off, and deduplicate on `webhook-id`: a delivery is "
        "sent at least once, and may arrive out of order. Answer 2xx within WEBHOOK_TIMEOUT "
        "(10 s) to acknowledge; 410 Gone to stop that delivery; anything else, or no answer, "
        "is retried on WEBHOOK_RETRY_SCHEDULE (5 s, 1 min, 10 min, 1 h, 6 h), then given up "
        "(a 429 or 503 with Retry-After: after that long instead). "
        "Redirects are not followed."
    ),
    params=(
        Param(
            "webhook-id",
            "header",
            "The delivery's id: the same on every retry of it, distinct between deliveries",
            {"type": "string"},
            "msg_2b7f4c1e9a0d4e6f8b3c5d7e9f1a2b3c",
            required=True,
        ),
        Param(
            "webhook-timestamp",
            "header",
            "When this attempt was signed, Unix seconds",
            {"type": "string", "pattern": "^[0-9]+$"},
            "1795775404",
            required=True,
        ),
        Param(
            "webhook-signature",
            "header",
            "`v1,` and the base64 signature; space-separated when several secrets sign",
            {"type": "string"},
            "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
            required=True,
        ),
    ),
    body=WebhookDeliveryOut,
    body_examples={"a job completed": EXAMPLE_DELIVERY},
    replies={
        200: Reply("Any 2xx: delivered", content={"text/plain": {"type": "string"}}, example="ok"),
        410: Reply(
            "Gone: this delivery is not retried", content={"text/plain": {"type": "string"}}, example="gone"
        ),
    },
)
