"""Judging that knows no task: judge stages as hallurun runs, the heuristic judge, verdict parsing, metrics,
agreement between judges, and the tables `hallurun eval` and `hallurun compare` print."""
