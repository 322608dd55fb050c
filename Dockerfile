# menagerie image: one image for the HTTP API (default CMD), the worker and
# the migration job (both select their command in docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Unprivileged runtime user (created before the COPYs so its uid is stable).
RUN groupadd --system --gid 10001 menagerie \
 && useradd --system --uid 10001 --gid menagerie --home-dir /app \
      --no-create-home --shell /usr/sbin/nologin menagerie

# Project metadata + the package first: the dependency install layer is only
# rebuilt when these change, not when sql/, migrations/ or the entry scripts do.
# README* is a wildcard so the build still works before a README exists.
COPY pyproject.toml README* ./
COPY app/ ./app/
RUN pip install --no-cache-dir . \
 && rm -rf build ./*.egg-info

# Data directories and entry points. The code locates sql/ and migrations/
# relative to the repository root, which is /app here; running from /app also
# puts /app first on sys.path, so `import app` resolves to /app/app.
COPY sql/ ./sql/
COPY migrations/ ./migrations/
COPY server.py worker.py ./

# Writable scratch directory for the runtime user (everything else stays root-owned).
RUN mkdir -p /app/.data && chown 10001:10001 /app/.data

USER 10001:10001

ENV HOST=0.0.0.0 \
    PORT=8000

EXPOSE 8000

# Liveness of the HTTP API; the worker and migrate services disable this in compose.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["python", "server.py"]
