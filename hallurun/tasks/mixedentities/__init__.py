"""The mixedentities task: its data, its scoring (`scoring.py`) and its name builder (`names.py`)."""

from __future__ import annotations

from pathlib import Path

from hallurun.tasks.mixedentities.scoring import SCORING
from hallurun.tasks.plugin import TaskPlugin

PLUGIN = TaskPlugin(folder=Path(__file__).resolve().parent, scoring=SCORING)
