#!/usr/bin/env bash
# A Ray cluster of several nodes on this one host, and `gridwatch serve --cluster auto` against it
# (docs/operating.md, "A cluster on one host"). Every node gets its own --temp-dir and its own
# ports, so this cluster neither meets nor stops any other Ray on the host; nodes are stopped
# one by one by their process group, never with `ray stop` (which stops every Ray on the host).
#
#   scripts/cluster-local.sh up                 # start the nodes (default: head + 1 camera node)
#   scripts/cluster-local.sh serve [ARGS...]    # up, then gridwatch serve --cluster auto ARGS
#   scripts/cluster-local.sh status             # ray status of this cluster
#   scripts/cluster-local.sh stop-node NAME     # stop one node (head, node1, node2, ...)
#   scripts/cluster-local.sh down               # stop every node of this cluster
#
# Environment:
#   CLUSTER_DIR   where each node's temp dir, log and process group id go (default /tmp/gridwatch-cluster)
#   PORT_BASE     the head's GCS port; node i uses PORT_BASE + 100*i + 1..59 (default 46379)
#   HEAD_CPUS     CPUs of the head for camera workers (default 1; 0 keeps workers off the head,
#                 and then a move needs CAMERA_NODES >= 2 to have somewhere to go)
#   CAMERA_NODES  nodes besides the head (default 1), CPUS_PER_NODE CPUs each (default 1)
#   GRIDWATCH_DATABASE_URL  PostgreSQL for cases (cluster mode refuses SQLite)
set -euo pipefail

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/gridwatch-cluster}
PORT_BASE=${PORT_BASE:-46379}
HEAD_CPUS=${HEAD_CPUS:-1}
CAMERA_NODES=${CAMERA_NODES:-1}
CPUS_PER_NODE=${CPUS_PER_NODE:-1}
ADDRESS=127.0.0.1:${PORT_BASE}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RAY=${RAY:-$(command -v ray || echo "$ROOT/.venv/bin/ray")}
GRIDWATCH=${GRIDWATCH:-$(command -v gridwatch || echo "$ROOT/.venv/bin/gridwatch")}

# A shared host: only holders of this cluster's token may join it or submit work.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$CLUSTER_DIR/auth_token}
# Ray's defaults take minutes to call a vanished node dead (its CPUs count as taken meanwhile);
# these mark it dead within about two seconds. Read by the GCS: set before the head starts.
export RAY_health_check_initial_delay_ms=${RAY_health_check_initial_delay_ms:-0}
export RAY_health_check_period_ms=${RAY_health_check_period_ms:-500}
export RAY_health_check_timeout_ms=${RAY_health_check_timeout_ms:-500}
export RAY_health_check_failure_threshold=${RAY_health_check_failure_threshold:-4}
export RAY_ADDRESS=$ADDRESS  # what `--cluster auto` (ray.init(address="auto")) joins
export RAY_USAGE_STATS_ENABLED=0

node_ports() {  # the ports of node $1 (0: the head), all distinct from every other node's
    local base=$((PORT_BASE + 100 * $1))
    echo "--node-manager-port $((base + 1)) --object-manager-port $((base + 2))" \
        "--dashboard-agent-grpc-port $((base + 3)) --dashboard-agent-listen-port $((base + 4))" \
        "--runtime-env-agent-port $((base + 5)) --metrics-export-port $((base + 6))" \
        "--min-worker-port $((base + 10)) --max-worker-port $((base + 59))"
}

start_node() {  # name index extra-args...
    local name=$1 index=$2
    shift 2
    local dir=$CLUSTER_DIR/$name
    if [[ -f $dir/pgid ]] && kill -0 -- "-$(cat "$dir/pgid")" 2>/dev/null; then
        echo "$name already running (process group $(cat "$dir/pgid"))"
        return
    fi
    mkdir -p "$dir/tmp"
    # Its own session: the node's processes share one process group, which stop-node ends.
    # shellcheck disable=SC2046
    setsid "$RAY" start --block --temp-dir "$dir/tmp" $(node_ports "$index") "$@" \
        >"$dir/log" 2>&1 </dev/null &
    echo $! >"$dir/pgid"
    echo "$name starting (process group $!, log $dir/log)"
}

wait_for_nodes() {
    local want=$((CAMERA_NODES + 1))
    for _ in $(seq 1 120); do
        if ! kill -0 -- "-$(cat "$CLUSTER_DIR/head/pgid")" 2>/dev/null; then
            echo "the head did not start:" >&2
            tail -5 "$CLUSTER_DIR/head/log" >&2
            exit 1
        fi
        local alive
        alive=$("$ROOT/.venv/bin/python" - <<EOF 2>/dev/null || echo 0
import ray
ray.init(address="$ADDRESS", log_to_driver=False, logging_level="ERROR")
print(sum(1 for n in ray.nodes() if n["Alive"]))
EOF
)
        if [[ ${alive:-0} -ge $want ]]; then
            echo "cluster up at $ADDRESS: $alive nodes"
            return
        fi
        sleep 1
    done
    echo "the cluster did not come up; see $CLUSTER_DIR/*/log" >&2
    exit 1
}

up() {
    # Ray's sockets live under each node's temp dir and a Unix socket path holds 107 bytes;
    # TEMP/session_<date>_<pid>/sockets/plasma_store takes about 70 of them.
    if (( ${#CLUSTER_DIR} + 7 + 70 > 107 )); then
        echo "CLUSTER_DIR=$CLUSTER_DIR is too long for Ray's socket paths: use a short one (under 30 characters)" >&2
        exit 2
    fi
    mkdir -p "$CLUSTER_DIR"
    if [[ ! -s $RAY_AUTH_TOKEN_PATH ]]; then
        (umask 077 && "$ROOT/.venv/bin/python" -c "import secrets; print(secrets.token_hex(32))" \
            >"$RAY_AUTH_TOKEN_PATH")
    fi
    start_node head 0 --head --port "$PORT_BASE" --num-cpus "$HEAD_CPUS" --include-dashboard false \
        --ray-client-server-port $((PORT_BASE + 7))
    sleep 3  # the GCS first: the other nodes join it
    for i in $(seq 1 "$CAMERA_NODES"); do
        start_node "node$i" "$i" --address "$ADDRESS" --num-cpus "$CPUS_PER_NODE"
    done
    wait_for_nodes
}

stop_node() {
    local dir=$CLUSTER_DIR/$1
    if [[ ! -f $dir/pgid ]]; then
        echo "no node $1 under $CLUSTER_DIR" >&2
        return 1
    fi
    local pgid
    pgid=$(cat "$dir/pgid")
    # Only this node's process group: the other nodes and any other Ray on the host run on.
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 20); do
        kill -0 -- "-$pgid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    rm -f "$dir/pgid"
    echo "$1 stopped"
}

case ${1:-} in
    up) up ;;
    serve)
        shift
        up
        exec "$GRIDWATCH" serve --cluster auto "$@"
        ;;
    status) exec "$RAY" status --address "$ADDRESS" ;;
    stop-node) stop_node "${2:?which node: head, node1, ...}" ;;
    down)
        for dir in "$CLUSTER_DIR"/node* "$CLUSTER_DIR"/head; do
            if [[ -f $dir/pgid ]]; then
                stop_node "$(basename "$dir")"
            fi
        done
        ;;
    *)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
