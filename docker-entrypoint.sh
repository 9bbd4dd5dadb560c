#!/bin/sh
# Entrypoint of the one image: the first argument picks the role.
#
#   api [GUNICORN ARGS...]      gunicorn wsgi:app on 0.0.0.0:$PORT (config: app/system/gunicorn_conf.py)
#   worker POOL [ARGS...]       python -m workers run --pool POOL [ARGS...]
#   scheduler [ARGS...]         python -m workers scheduler [ARGS...]
#   migrate                     python -m app db init (idempotent; run once before the api)
#   manage ARGS...              python -m app ARGS...
#   healthcheck [ROLE [POOL]]   exit 0 when this container's role is healthy
#   anything else               executed as given
#
# gunicorn sizing: WEB_CONCURRENCY (processes, default 2) and GUNICORN_THREADS (threads per
# process, default 4); any other gunicorn flag through GUNICORN_CMD_ARGS or after `api`.
set -eu

ROLE_FILE="${TMPDIR:-/tmp}/app-role"

remember_role() {
    # Read by `healthcheck` without arguments (the image's HEALTHCHECK).
    ( printf '%s\n' "$*" > "$ROLE_FILE" ) 2>/dev/null || true
}

usage() {
    echo "usage: docker-entrypoint.sh {api|worker POOL|scheduler|migrate|manage ARGS...|healthcheck [ROLE [POOL]]|COMMAND...}" >&2
}

healthcheck() {
    if [ "$#" -eq 0 ] && [ -r "$ROLE_FILE" ]; then
        # shellcheck disable=SC2046
        set -- $(cat "$ROLE_FILE")
    fi
    case "${1:-}" in
        api)
            exec python - <<'EOF'
import os, sys, urllib.request
url = "http://127.0.0.1:%s/health" % os.environ.get("PORT", "3002")
try:
    with urllib.request.urlopen(url, timeout=4) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:
    print("api unhealthy: %s" % e, file=sys.stderr)
    sys.exit(1)
EOF
            ;;
        worker)
            [ -n "${2:-}" ] || { echo "healthcheck worker: POOL missing" >&2; exit 1; }
            exec python -m workers ping --pool "$2"
            ;;
        scheduler)
            exec python -m workers ping --scheduler
            ;;
        *)
            # one-shot or ad-hoc commands: nothing to watch
            exit 0
            ;;
    esac
}

if [ "$#" -eq 0 ]; then
    set -- api
fi

case "$1" in
    api|server)
        shift
        remember_role api
        exec gunicorn -c python:app.system.gunicorn_conf wsgi:app \
            --bind "${HOST:-0.0.0.0}:${PORT:-3002}" \
            --workers "${WEB_CONCURRENCY:-2}" \
            --threads "${GUNICORN_THREADS:-4}" \
            --worker-tmp-dir /dev/shm \
            --timeout 60 \
            --graceful-timeout 30 \
            --keep-alive 75 \
            "$@"
        ;;
    worker)
        if [ "$#" -lt 2 ]; then
            echo "docker-entrypoint.sh worker: POOL missing (see workers/pools.py)" >&2
            usage
            exit 64
        fi
        pool="$2"
        shift 2
        remember_role worker "$pool"
        exec python -m workers run --pool "$pool" "$@"
        ;;
    scheduler)
        shift
        remember_role scheduler
        exec python -m workers scheduler "$@"
        ;;
    migrate)
        shift
        remember_role migrate
        exec python -m app db init "$@"
        ;;
    manage)
        shift
        exec python -m app "$@"
        ;;
    healthcheck)
        shift
        healthcheck "$@"
        ;;
    help|-h|--help)
        usage
        exit 0
        ;;
    *)
        exec "$@"
        ;;
esac
