#!/usr/bin/env bash
# A three-master Redis Cluster on loopback ports 7001-7003, for trying Fleet
# on a cluster by hand and for the shard benchmark (docs/scaling.md):
#
#   benches/local-cluster.sh start   # prints the REDIS_URL to use
#   benches/local-cluster.sh stop    # stops the nodes and deletes their data
#
# Each node keeps an append-only file with `appendfsync always`, as the test
# harness's do (a write is on disk before it is answered). No replicas: a
# stopped master's slots are unavailable until it is back.
set -euo pipefail
dir=${FLEET_CLUSTER_DIR:-/tmp/fleet-local-cluster}
ports=(7001 7002 7003)
case ${1:?start | stop} in
  start)
    mkdir -p "$dir"
    for port in "${ports[@]}"; do
      mkdir -p "$dir/$port"
      redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir/$port" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --appendonly yes --appendfsync always --save "" --logfile "$dir/$port/log"
    done
    for port in "${ports[@]}"; do until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done; done
    if ! redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok; then
      redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
      until redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
    fi
    urls=("${ports[@]/#/redis://127.0.0.1:}")
    (IFS=,; echo "REDIS_URL=${urls[*]}")
    ;;
  stop)
    for port in "${ports[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
    rm -rf "$dir"
    ;;
  *) echo "start | stop" >&2; exit 2 ;;
esac
