"""The exactly-once batch engine: a run from start to end (runner), the scheduler that feeds the server and
settles every item, poison isolation, the live counters and their display, and stages (a run of generated
prompts). Knows no task."""
