#!/usr/bin/env bash
# scripts/qdrant.sh — start the real Qdrant server kept in ../shared/tools/qdrant on a free
# port, with its data in a fresh temporary directory, and print shell assignments:
#
#   QDRANT_URL=http://127.0.0.1:PORT+1   (gRPC: what the `qdrant` sink and qdrant-client use)
#   QDRANT_HTTP=http://127.0.0.1:PORT    (REST)
#   QDRANT_PID=...                       (stop it with: kill "$QDRANT_PID")
#   QDRANT_DATA=...                      (its data directory; remove it after stopping)
#
# Usage:  eval "$(scripts/qdrant.sh)" && export QDRANT_URL
# QDRANT_HOME overrides where the server and its start.sh are.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# Default: the shared tools next to the checkout (main checkout or a worktree one level deeper).
if [ -z "${QDRANT_HOME:-}" ]; then
  for candidate in "$HERE/../../shared/tools/qdrant" "$HERE/../../../shared/tools/qdrant"; do
    if [ -x "$candidate/start.sh" ]; then QDRANT_HOME=$candidate; break; fi
  done
fi
QDRANT_HOME=${QDRANT_HOME:-$HERE/../../shared/tools/qdrant}
if [ ! -x "$QDRANT_HOME/start.sh" ]; then
  echo "qdrant.sh: no Qdrant server at $QDRANT_HOME (set QDRANT_HOME)" >&2
  exit 1
fi

port_free() {
  ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null
}

for _ in $(seq 1 50); do
  PORT=$((20000 + RANDOM % 40000))
  if port_free "$PORT" && port_free $((PORT + 1)); then
    DATA=$(mktemp -d "${TMPDIR:-/tmp}/pipe-qdrant.XXXXXX")
    PID=$("$QDRANT_HOME/start.sh" "$PORT" "$DATA")
    echo "QDRANT_URL=http://127.0.0.1:$((PORT + 1))"
    echo "QDRANT_HTTP=http://127.0.0.1:$PORT"
    echo "QDRANT_PID=$PID"
    echo "QDRANT_DATA=$DATA"
    exit 0
  fi
done
echo "qdrant.sh: no free pair of ports found" >&2
exit 1
