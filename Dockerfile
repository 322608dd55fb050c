# menagerie image: one image for the HTTP API (default CMD), the worker and the migration job
# (docker-compose.yml picks their commands). Two stages: the first builds menagerie's wheel,
# the second installs the locked dependencies and that wheel, and nothing else: no source
# tree, no compiler, no embedded PostgreSQL (the image is given a DATABASE_URL).

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# sql/ and migrations/ are linked into app/ (app/queries, app/migrations): the wheel carries them.
COPY pyproject.toml README.md ./
COPY app/ ./app/
COPY sql/ ./sql/
COPY migrations/ ./migrations/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Unprivileged runtime user (created before the installs so its uid is stable).
RUN groupadd --system --gid 10001 menagerie \
 && useradd --system --uid 10001 --gid menagerie --home-dir /home/menagerie \
      --create-home --shell /usr/sbin/nologin menagerie

# The exact dependencies of requirements.lock (hashes checked), then menagerie itself.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels && pip check

USER 10001:10001
WORKDIR /home/menagerie

ENV HOST=0.0.0.0 \
    PORT=8000

EXPOSE 8000

# Readiness of the HTTP API; the worker and migrate services override or disable this in compose.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["menagerie", "server"]
