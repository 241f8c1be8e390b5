"""Judging that knows no task. A task brings its `Scoring` (scoring.py) built from `Question`s (question.py);
eval asks them through a `Judge` (judge.py: the heuristic; model_judge.py: a model, each question a hallurun run),
and writes and prints what they found (evaluate.py, report.py, compare.py). Shared tools: text.py (tokens, F1,
sentences), parse.py (reading verdicts), heuristic.py (refusal phrases, answer matching), metrics.py (rates,
bins, agreement)."""
