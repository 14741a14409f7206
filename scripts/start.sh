#!/usr/bin/env bash
# Install everything, then run web (http://127.0.0.1:8000) and a worker together.
# Embedded defaults: SQLite in var/, media in var/media, Redis on 127.0.0.1:6379
# (started here if installed), the offline model in var/models/.
set -euo pipefail
cd "$(dirname "$0")/.."
XRAY_SKIP_CHROMIUM=1 bash scripts/bootstrap.sh
export XRAY_DEBUG=${XRAY_DEBUG:-1}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
bash scripts/ensure_redis.sh
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py setup_models
.venv/bin/python manage.py ensure_admin
# A first set of real cases to pick from (and score SSIM against), where ../shared has
# the Kaggle layout of IU X-ray: 3,851 reports, 4 images. Once; re-running is harmless.
sample=${XRAY_SAMPLE_KAGGLE_DIR:-../shared/data/iuxray-kaggle}
if [ -d "$sample" ] && [ ! -f var/.sample-imported ]; then
  .venv/bin/python manage.py import_iuxray --kaggle-dir "$sample" && touch var/.sample-imported
fi
# One worker per queue: a long import on `cpu` never holds up generations on `gpu`.
.venv/bin/celery -A worker.app worker -Q gpu --pool solo -n gpu@%h --beat \
  --schedule var/celerybeat-schedule --loglevel INFO >var/worker.log 2>&1 &
gpu_pid=$!
.venv/bin/celery -A worker.app worker -Q cpu --pool solo -n cpu@%h \
  --loglevel INFO >var/worker-cpu.log 2>&1 &
cpu_pid=$!
trap 'kill "$gpu_pid" "$cpu_pid" 2>/dev/null || true' EXIT INT TERM
echo "Worker logs: var/worker.log, var/worker-cpu.log. Open http://127.0.0.1:8000 and log in."
.venv/bin/python manage.py runserver 127.0.0.1:8000 --noreload
