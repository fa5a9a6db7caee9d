#!/usr/bin/env bash
# Measures issue 8's figures with the release binary against the machine's
# Redis and Postgres (REDIS_URL, DATABASE_URL's server), each phase with its
# own database and key prefix, removed afterwards. docs/benchmarks.md quotes
# what it printed.
#
#   benches/fleet-figures.sh intake      # intake alone, 64 concurrent senders
#   benches/fleet-figures.sh drain       # 2 workers on a pre-filled stream
#   benches/fleet-figures.sh end-to-end  # intake + 2 workers, 64 concurrent senders
#   benches/fleet-figures.sh rate 1000   # freshness at a steady rate (webhooks/s)
#   benches/fleet-figures.sh memory 1000 600  # resident memory at a rate for N seconds
#
# EVENTS (default 50000) and COURSES (default 200) size the workload;
# WORKERS (default 2) is how many workers run. FLEET_STREAM_SHARDS (default
# 1) spreads the events over that many stream shards; REDIS_URL may name the
# nodes of a Redis Cluster, comma-separated (benches/local-cluster.sh starts
# one on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:?phase: intake | drain | end-to-end | rate R | memory R SECONDS}
events=${EVENTS:-50000}
courses=${COURSES:-200}
workers=${WORKERS:-2}
fleet=target/release/fleet
[ -x "$fleet" ] || cargo build --release --locked
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
run_id=figures$$
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export DATABASE_URL="${admin_url%/*}/$run_id"
export FLEET_KEY_PREFIX="$run_id:"
export THINKIFIC_WEBHOOK_SECRET=figures-signing-key
export RUST_LOG=warn
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Every node of a cluster holds some of the keys: each deletes its own.
  for node in ${REDIS_URL//,/ }; do
    redis-cli -u "$node" --scan --pattern "$run_id:*" | sed 's/^/DEL /' | redis-cli -u "$node" >/dev/null
  done
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $run_id WITH (FORCE)" >/dev/null
}
trap cleanup EXIT
psql "$admin_url" -qc "CREATE DATABASE $run_id" >/dev/null
"$fleet" migrate >/dev/null 2>&1

start_intake() {
  FLEET_LISTEN=127.0.0.1:18080 "$fleet" intake 2>>"/tmp/$run_id-intake.log" &
  pids+=($!); intake_pid=$!
  until curl -sf http://127.0.0.1:18080/readyz >/dev/null; do sleep 0.1; done
}
start_workers() {
  worker_pids=()
  for n in $(seq 1 "$workers"); do
    FLEET_CONSUMER_NAME="$run_id-$n" FLEET_HEALTH_LISTEN="127.0.0.1:1910$n" "$fleet" worker 2>>"/tmp/$run_id-worker.log" &
    pids+=($!); worker_pids+=($!)
  done
  for n in $(seq 1 "$workers"); do until curl -sf "http://127.0.0.1:1910$n/readyz" >/dev/null; do sleep 0.1; done; done
}
redis_pid=$(pgrep -d, redis-server || true)
metrics=http://127.0.0.1:19101/metrics,http://127.0.0.1:19102/metrics
loadtest() { "$fleet" loadtest --url http://127.0.0.1:18080 --events "$events" --courses "$courses" "$@"; }

case $phase in
  intake)
    start_intake
    env -u DATABASE_URL "$fleet" loadtest --url http://127.0.0.1:18080 --events "$events" --courses "$courses" \
      --concurrency 64 --drain-timeout 0 --watch-pid "$intake_pid${redis_pid:+,$redis_pid}" || true
    ;;
  drain)
    start_intake
    env -u DATABASE_URL "$fleet" loadtest --url http://127.0.0.1:18080 --events "$events" --courses "$courses" \
      --concurrency 64 --drain-timeout 0 >/dev/null 2>&1 || true
    kill "$intake_pid"
    started=$(date +%s.%N)
    start_workers
    until [ "$(psql "$DATABASE_URL" -Atc 'SELECT count(*) FROM events')" -ge "$events" ]; do sleep 0.02; done
    # Every shard's entries delivered and acknowledged.
    until [ "$("$fleet" status --json | jq -c '[.undelivered, .pending]')" = "[0,0]" ]; do sleep 0.05; done
    ended=$(date +%s.%N)
    echo "drain: $events events applied, cached and acknowledged by $workers workers in $(echo "$ended - $started" | bc) s (workers started included): $(echo "$events / ($ended - $started)" | bc) events/s"
    # From the first batch's transaction to the last one's, as Postgres saw them.
    span=$(psql "$DATABASE_URL" -Atc "SELECT extract(epoch FROM max(applied_at) - min(applied_at)) FROM events")
    echo "drain: first to last batch applied in $span s: $(echo "$events / $span" | bc) events/s"
    ;;
  end-to-end)
    start_intake; start_workers
    loadtest --concurrency 64 --metrics-url "$metrics" --database-url "$DATABASE_URL" \
      --watch-pid "$intake_pid,${worker_pids[0]},${worker_pids[1]}${redis_pid:+,$redis_pid}"
    ;;
  rate)
    start_intake; start_workers
    loadtest --rate "${2:?rate}" --metrics-url "$metrics" --database-url "$DATABASE_URL"
    ;;
  memory)
    rate=${2:?rate}; seconds=${3:?seconds}
    start_intake; start_workers
    EVENTS=$((rate * seconds))
    ( while sleep 30; do
        echo "rss_kb intake $(awk '/VmRSS/{print $2}' /proc/$intake_pid/status) workers $(awk '/VmRSS/{print $2}' /proc/${worker_pids[0]}/status) $(awk '/VmRSS/{print $2}' /proc/${worker_pids[1]}/status)"
      done ) & pids+=($!)
    "$fleet" loadtest --url http://127.0.0.1:18080 --events "$EVENTS" --courses "$courses" --rate "$rate" --metrics-url "$metrics"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
