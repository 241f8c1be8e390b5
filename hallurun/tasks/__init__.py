"""The tasks: the registry (`registry.py`), what a task's code gives hallurun (`plugin.py`), and one folder per
built-in task, holding its task.json, its data and its own code (questions, scoring, generators)."""
