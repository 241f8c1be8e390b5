"""The tasks: the registry and one folder per task, holding its data, its task.json and its own code."""
