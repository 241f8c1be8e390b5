"""Where an evaluation's files go inside a run directory."""

from __future__ import annotations

EVAL_DIR = "eval"  # RUN_DIR/eval/<judge>/: one folder per judge, and the agreement files
EVAL_RESULTS = "eval_results.json"  # in each judge's folder; the primary judge's also in RUN_DIR
JUDGMENTS = "judgments.jsonl"
