"""The longwiki task: its data and its scoring (`scoring.py`)."""

from __future__ import annotations

from pathlib import Path

from hallurun.tasks.longwiki.scoring import SCORING
from hallurun.tasks.plugin import TaskPlugin

PLUGIN = TaskPlugin(folder=Path(__file__).resolve().parent, scoring=SCORING)
