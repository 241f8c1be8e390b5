#!/usr/bin/env bash
# hallurun's demo: 100 PreciseWikiQA questions answered by the real vLLM engine serving the built-in tiny model
# (a random smoke-test model built locally: its answers are noise, the engine and the supervision are real).
# On a machine without a GPU this is vLLM's CPU build; the first start takes about a minute.
set -euo pipefail

RUN=runs/demo
rm -rf "$RUN"
hallurun doctor --model tiny || true
echo
hallurun inference --task precisewikiqa --model tiny --limit 100 --run-dir "$RUN"
echo
hallurun status "$RUN"
echo
# The offline heuristic judge: approximate, and needs no judge model (--judge MODEL for an LLM judge).
hallurun eval "$RUN"
echo "HalluLens-format answers: $RUN/generation.jsonl"
echo "To see a wedge, a crash and an interrupt survived: make demo-mock"
