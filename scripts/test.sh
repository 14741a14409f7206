#!/usr/bin/env bash
# Run the whole test suite against PostgreSQL and Redis on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/15}
# Development mode (http, any SECRET_KEY); tests/test_settings.py checks production.
export XRAY_DEBUG=${XRAY_DEBUG:-1}
export SECRET_KEY=${SECRET_KEY:-test-secret-key}
export HF_HUB_OFFLINE=1
bash scripts/ensure_redis.sh
echo "Redis answers on 127.0.0.1:6379; tests use ${CELERY_BROKER_URL} and ${DATABASE_URL}"
.venv/bin/ruff check -q . && echo "ruff check: clean"
.venv/bin/ruff format -q --check . && echo "ruff format: clean"
exec .venv/bin/python -m pytest "$@"
