#!/usr/bin/env bash
# The two newcomer commands, each doing its own set-up:
#   ./dev.sh demo   run the gateway on an in-memory store with a stand-in backend
#   ./dev.sh test   lint, type-check and run every test tier
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=${PYTHON:-python3}

setup_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "Creating $VENV ..." >&2
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "Installing Python packages into $VENV (log: $VENV/install.log) ..." >&2
        if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
               "$VENV/bin/python" -m pip install -e '.[test]'; } > "$VENV/install.log" 2>&1; then
            tail -n 30 "$VENV/install.log" >&2
            echo "Installing the Python packages failed; see $VENV/install.log." >&2
            exit 1
        fi
        echo "$want" > "$stamp"
    fi
}

# nginx (forward-auth tier), chromium (browser tier), redis-server (private
# Redis for outage tests) and wrk (benchmarks) come from Debian's packages.
setup_system() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing ${missing[*]} with apt-get ..." >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
        echo "Missing system packages: ${missing[*]} (install them with apt-get;" \
             "their test tiers are skipped, and fail under CI=true)." >&2
    fi
}

ensure_redis() {
    if command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        return 0
    fi
    if command -v redis-server >/dev/null 2>&1; then
        echo "Starting redis-server on 127.0.0.1:6379 (no persistence) ..." >&2
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
            --appendonly no --logfile /tmp/rpa-gateway-test-redis.log >&2
        for _ in $(seq 50); do
            redis-cli -p 6379 ping >/dev/null 2>&1 && return 0
            sleep 0.1
        done
    fi
    echo "No Redis on 127.0.0.1:6379: the real-Redis tier is skipped (fails under CI=true)." >&2
}

case "${1:-}" in
    demo)
        shift
        setup_python
        exec "$VENV/bin/rpa-gateway" demo "$@"
        ;;
    test)
        shift
        setup_system
        setup_python
        ensure_redis
        "$VENV/bin/ruff" format --check gateway admin tests bench
        "$VENV/bin/ruff" check gateway admin tests bench
        "$VENV/bin/mypy"
        exec "$VENV/bin/pytest" "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo | ./dev.sh test [pytest arguments]" >&2
        exit 2
        ;;
esac
