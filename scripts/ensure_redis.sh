#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379: start the installed one if it does not.
set -euo pipefail
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  exit 0
fi
if command -v redis-server >/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0
    sleep 0.1
  done
fi
echo "No Redis on 127.0.0.1:6379 and none could be started." >&2
echo "Install one: sudo apt-get install redis-server (or: docker run -p 6379:6379 redis:7)" >&2
exit 1
