"""hallurun's benchmark suite (`make bench`, `make bench-quick`): client overhead, recovery from wedges, poison
inputs and scale, each measured side by side with the baseline users have today, in one run on one machine.

`bench/run.py` is the entry point; each section lives in its own module and returns rows for `bench/report.py`.
"""
