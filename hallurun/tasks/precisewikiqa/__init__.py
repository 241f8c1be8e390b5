"""The precisewikiqa task: its data, its scoring, and its question generator."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hallurun.tasks.plugin import Generated, Generator, TaskPlugin
from hallurun.tasks.precisewikiqa.scoring import SCORING

if TYPE_CHECKING:
    from hallurun.core.stage import Settings


def _generate(docs: Path, n: int, seed: int, out: Path | None, settings: Settings) -> Generated:
    # Imported on use: the generator runs request stages, and the runner must not load with the registry.
    from hallurun.tasks.precisewikiqa import generate

    return generate.generate(docs, n, seed, out or generate.default_out(settings.model, n, seed), settings)


PLUGIN = TaskPlugin(
    folder=Path(__file__).resolve().parent,
    scoring=SCORING,
    generator=Generator(_generate, "questions from GoodWiki-style documents, checked for answerability"),
)
