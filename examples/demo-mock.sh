#!/usr/bin/env bash
# hallurun's fault demo: the built-in PreciseWikiQA sample against the fault-injecting mock server.
# It shows the three things hallurun promises: Ctrl-C loses nothing (and prints how to resume), a wedged
# server (health 200, no tokens) is detected and restarted, and every item comes back exactly once.
set -euo pipefail

RUN=runs/demo-mock
rm -rf "$RUN"
# Each mock server process wedges after 70 generation requests and fails 5% of requests with HTTP 500.
FAULTS=(--latency 0.05 --token-rate 200 --fault hang-after:70 --fault error-rate:0.05)

echo "== 1. start the run, then interrupt it (as Ctrl-C would) once 30 answers are in"
hallurun inference --task precisewikiqa --model demo-model --server mock --run-dir "$RUN" \
    --concurrency 8 --stall-timeout 3 -- "${FAULTS[@]}" &
pid=$!
until [ -s "$RUN/results.jsonl" ] && [ "$(wc -l < "$RUN/results.jsonl")" -ge 30 ]; do sleep 0.2; done
kill -INT "$pid"
status=0; wait "$pid" || status=$?
echo "(hallurun exited with $status: interrupted, nothing lost)"

echo
echo "== 2. resume it: the server will wedge once more and be restarted"
hallurun resume "$RUN"

echo
echo "== 3. what happened"
hallurun status "$RUN"
grep -E '"event":"(hang_detected|server_restarted|interrupted|run_resumed)"' "$RUN/events.jsonl" | cut -c1-150
python3 - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
ids = [json.loads(line)["id"] for line in open(f"{run}/results.jsonl")]
print(f"results.jsonl: {len(ids)} lines, {len(set(ids))} distinct ids")
PY
echo "HalluLens-format answers: $RUN/generation.jsonl"
