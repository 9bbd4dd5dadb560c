# syntax=docker/dockerfile:1
#
# One image, every role (Redash style): the command picks it.
#
#   docker run IMAGE api                 gunicorn wsgi:app on $PORT (default 3002)
#   docker run IMAGE worker POOL [ARGS]  python -m workers run --pool POOL [ARGS]
#   docker run IMAGE scheduler           python -m workers scheduler
#   docker run IMAGE migrate             python -m app db init   (idempotent)
#   docker run IMAGE manage ARGS...      python -m app ARGS...
#   docker run IMAGE healthcheck [ROLE]  the container health check (used by HEALTHCHECK below)
#   docker run IMAGE anything else       run as given (e.g. `bash`, `python -m workers status`)
#
# See docker-entrypoint.sh, docker-compose.yml and .env.example.

########################################################################################
# builder: a virtualenv with the Python dependencies. Compilers live only here, so
# packages without a wheel for this platform still install, and none of it ships.
########################################################################################
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libpq-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv

# Only requirements.txt here: code changes do not invalidate the dependency layer.
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/requirements.txt

########################################################################################
# runtime
########################################################################################
FROM python:3.11-slim AS runtime

# Chromium (Debian's, not a Playwright download) and fonts for the `sessions` pool's
# WhatsApp Web sessions; tini as PID 1 so signals reach the process and Chromium's
# children are reaped; libpq5 for a psycopg built from source.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        chromium \
        fonts-liberation \
        fonts-dejavu-core \
        fonts-noto-color-emoji \
        ca-certificates \
        libpq5 \
        tini \
    && rm -rf /var/lib/apt/lists/*

# Non-root user; /data (DATA_DIR: media files) is the only place it writes.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    APP_ENV=production \
    HOST=0.0.0.0 \
    PORT=3002 \
    DATA_DIR=/data \
    CHROMIUM_PATH=/usr/bin/chromium \
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY --chmod=0755 docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# The code last (it changes most often); owned by root, read-only for the app user.
COPY . /app

# Numeric, so that orchestrators can verify it is not root (runAsNonRoot).
USER 10001:10001

EXPOSE 3002

# Role-aware: the api answers GET /health; a worker or the scheduler must have a live
# heartbeat in Redis (`python -m workers ping ...`). docker-compose.yml also sets an
# explicit health check per service.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["docker-entrypoint.sh", "healthcheck"]

ENTRYPOINT ["/usr/bin/tini", "--", "docker-entrypoint.sh"]
CMD ["api"]
