#!/usr/bin/env bash
# hallurun's demo: the real vLLM engine (vLLM's CPU build on a machine without a GPU) serving the two built-in
# smoke-test models, one after the other, on PreciseWikiQA and MixedEntities, scored by the offline heuristic
# judge, compared in one table and two figures (examples/demo.toml). The first start of each model takes about a
# minute on a CPU.
set -euo pipefail

rm -rf runs/demo
hallurun doctor --model tiny || true
echo
hallurun sweep examples/demo.toml
echo
hallurun status runs/demo
echo
cat runs/demo/report.md
echo "figures: runs/demo/metrics.png runs/demo/by_popularity.png"
echo "HalluLens-format answers: runs/demo/<model>/<task>/generation.jsonl"
echo "To see a wedge, a crash and an interrupt survived: make demo-mock"
