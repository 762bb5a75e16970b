#!/usr/bin/env bash
# `make screenshots`: the dashboard's four pages of a registry (default: the demo's, from `make demo`) as PNGs in
# docs/img/, taken by headless Chromium from `registry ui` on a free loopback port. Run it deliberately, after a
# change to the pages; the README shows docs/img/dashboard-task.png.
set -euo pipefail
cd "$(dirname "$0")/.."
export REGISTRY_HOME="${REGISTRY_HOME:-demo-out/registry}"
OUT="${OUT:-docs/img}"
TASK="${TASK:-$(registry list --json | python -c 'import json, sys; print(json.load(sys.stdin)[-1]["name"])')}"
LOG="$(mktemp)"
PROFILE="$(mktemp -d)"
registry ui --port 0 2> "$LOG" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$LOG" "$PROFILE"' EXIT
URL=""
for _ in $(seq 300); do
  URL="$(grep -o 'http://[^ ]*' "$LOG" || true)"
  [ -n "$URL" ] && break
  kill -0 "$SERVER" 2> /dev/null || { cat "$LOG"; exit 1; }
  sleep 0.2
done
shot() {  # NAME PATH HEIGHT
  chromium --headless --disable-gpu --no-sandbox --no-first-run --hide-scrollbars --user-data-dir="$PROFILE" \
    --window-size="1280,$3" --screenshot="$OUT/dashboard-$1.png" "${URL%/}$2" 2> /dev/null
  echo "wrote $OUT/dashboard-$1.png"
}
mkdir -p "$OUT"
shot tasks / 600
shot task "/tasks/$TASK" 1500
shot matrix /matrix 600
shot health /health 760
