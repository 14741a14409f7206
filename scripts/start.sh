#!/usr/bin/env bash
# Install everything, then run web (http://127.0.0.1:8000) and a worker together.
# Embedded defaults: SQLite in var/, media in var/media, Redis on 127.0.0.1:6379
# (started here if installed), the offline model in var/models/.
set -euo pipefail
cd "$(dirname "$0")/.."
XRAY_SKIP_CHROMIUM=1 XRAY_SKIP_DICOM3TOOLS=1 bash scripts/bootstrap.sh
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
# One worker per queue, each a prefork pool of one child (which enforces time limits):
# `gpu` generations, `train` training and evaluation (a week-long run never blocks
# generations), `cpu` imports, `control` reconcile and sweeps (never behind a long
# job). Beat runs once, as its own process.
pids=()
for queue in gpu train cpu control; do
  .venv/bin/celery -A worker.app worker -Q "$queue" -c 1 -n "$queue@%h" \
    --loglevel INFO >"var/worker-$queue.log" 2>&1 &
  pids+=($!)
done
.venv/bin/celery -A worker.app beat --schedule var/celerybeat-schedule \
  --loglevel INFO >var/beat.log 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
echo "Logs: var/worker-{gpu,train,cpu,control}.log, var/beat.log. Open http://127.0.0.1:8000 and log in."
.venv/bin/python manage.py runserver 127.0.0.1:8000 --noreload
