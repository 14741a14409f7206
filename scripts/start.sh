#!/usr/bin/env bash
# Install everything, then run web (http://127.0.0.1:8000) and a worker together.
# Embedded defaults: SQLite in var/, media in var/media, Redis on 127.0.0.1:6379
# (started here if installed), the offline model in var/models/.
# The console gets a short summary; each step's full output is in var/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
XRAY_SKIP_CHROMIUM=1 XRAY_SKIP_DICOM3TOOLS=1 bash scripts/bootstrap.sh
export XRAY_DEBUG=${XRAY_DEBUG:-1}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
log=var/setup.log
: > "$log"
quiet() { # quiet command...: output to var/setup.log; on failure show its end
  if ! "$@" >>"$log" 2>&1; then
    echo "failed: $*; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}
bash scripts/ensure_redis.sh
echo "Redis answers on 127.0.0.1:6379"
quiet .venv/bin/python manage.py migrate --noinput
echo "Database migrated (${DATABASE_URL:-SQLite in var/})"
.venv/bin/python manage.py setup_models 2>>"$log"
admin=$(.venv/bin/python manage.py ensure_admin 2>>"$log")
# A first set of real cases to pick from (and score SSIM against), where ../shared has
# the Kaggle layout of IU X-ray: 3,851 reports, 4 images. Once; re-running is harmless.
# The console gets the counts, skipped items by reason; each item is in the run's
# report (admin, Import runs).
sample=${XRAY_SAMPLE_KAGGLE_DIR:-../shared/data/iuxray-kaggle}
if [ -d "$sample" ] && [ ! -f var/.sample-imported ]; then
  echo "Importing the sample cases from $sample:"
  if .venv/bin/python manage.py import_iuxray --kaggle-dir "$sample" --brief \
    2>>"$log" | sed 's/^/  /'; then
    touch var/.sample-imported
  else
    echo "The sample import failed (see $log); the platform starts without it." >&2
  fi
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
.venv/bin/python manage.py runserver 127.0.0.1:8000 --noreload >var/web.log 2>&1 &
web=$!
pids+=("$web")
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
echo "Started 4 Celery workers (gpu, train, cpu, control) and beat; logs in var/worker-*.log, var/beat.log"
# The URL once the server answers (tens of seconds on a busy 2-core machine).
until (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null; do
  if ! kill -0 "$web" 2>/dev/null; then
    echo "The web server stopped; the end of var/web.log:" >&2
    tail -n 20 var/web.log >&2
    exit 1
  fi
  sleep 0.5
done
echo "Started the web server (log: var/web.log). Ctrl-C stops everything."
echo
echo "Open http://127.0.0.1:8000 and log in. $admin"
wait "$web"
