"""The model judge: every question is an ordinary hallurun run of a judge model.

Each question is a stage (supervised server, crash-safe checkpoint, exactly once) in
`RUN_DIR/eval/<judge>/<stage>/`, whose dataset is the stage's `prompts.jsonl`. Driven by `hallurun eval` (or
`hallurun.evaluate`), every stage runs on one event loop and the judge's server is launched once for all of them
(`core.command`): its log is `RUN_DIR/eval/<judge>/server.log`. A stage's prompts are a pure
function of the run's answers and of earlier stages' verdicts, so running `eval` again after a crash rebuilds
byte-identical prompt files, skips finished stages without starting a server, and continues the unfinished one
where it stopped. Verdicts that cannot be read are asked again once, in a `<stage>-retry` stage with a stricter
prompt, and then recorded as unparseable.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import orjson
from rich.console import Console

from hallurun.config import RunOptions, Sampling, ServerSpec
from hallurun.core import stage as run_stage
from hallurun.core.stage import Executor, in_new_loop
from hallurun.errors import EXIT_INTERRUPTED, RunStopped
from hallurun.eval.errors import EvalError, EvalStopped
from hallurun.eval.judge import HEURISTIC, HeuristicJudge, Judge
from hallurun.eval.metrics import JUDGE_FAILED, UNPARSEABLE
from hallurun.eval.question import Question, Verdict, retry_prompt

In = TypeVar("In")
V = TypeVar("V")

@dataclass(frozen=True)
class ModelJudge:
    """A judge model served by a launched or external server; `bind` gives it its folder for one evaluation."""

    model: str
    server: ServerSpec = field(default_factory=ServerSpec)
    operational: RunOptions = field(default_factory=RunOptions)
    execute: Executor = in_new_loop  # how each stage's run is driven (the command line adds its signal handling)
    folder: Path | None = None  # RUN_DIR/eval/<judge>/, set by bind
    label: str = "judge"  # the scoring's name: stage runs are named <label>-judge-<stage>
    console: Console | None = None

    @property
    def name(self) -> str:
        """The model name made safe for a path."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.model.strip("/")) or "judge"

    @property
    def note(self) -> str | None:
        return None

    def bind(self, folder: Path, label: str, console: Console) -> ModelJudge:
        return dataclasses.replace(self, folder=folder, label=label, console=console)

    def ask(self, question: Question[In, V], inputs: Mapping[str, In]) -> dict[str, Verdict[V]]:
        """Ask every item's prompt, parse the replies, re-ask the unreadable ones once in `<stage>-retry`."""
        stage = question.stage
        prompts = {item_id: question.prompt(value) for item_id, value in inputs.items()}
        replies, failures = self._run(stage, prompts, question.max_tokens)
        verdicts: dict[str, Verdict[V]] = {}
        retry: dict[str, str] = {}
        for item_id, prompt in prompts.items():
            reply = replies.get(item_id)
            if reply is None:
                verdicts[item_id] = Verdict(None, JUDGE_FAILED, {stage: failures.get(item_id, "no reply recorded")})
                continue
            value = question.parse(reply)
            if value is None:
                retry[item_id] = retry_prompt(prompt, reply, question.reply_format)
            verdicts[item_id] = Verdict(value, None, {stage: reply})
        if retry:
            again, failed_again = self._run(f"{stage}-retry", retry, question.max_tokens)
            for item_id in retry:
                replies_so_far = verdicts[item_id].replies
                reply = again.get(item_id)
                if reply is None:
                    verdicts[item_id] = Verdict(None, JUDGE_FAILED, {
                        **replies_so_far, f"{stage}-retry": failed_again.get(item_id, "no reply recorded")})
                    continue
                value = question.parse(reply)
                verdicts[item_id] = Verdict(value, UNPARSEABLE if value is None else None,
                                            {**replies_so_far, f"{stage}-retry": reply})
        return verdicts

    def _run(self, stage: str, prompts: dict[str, str], max_tokens: int) -> tuple[dict[str, str], dict[str, str]]:
        """One stage as a hallurun run in RUN_DIR/eval/<judge>/<stage>/: (replies by id, failure reasons by id)."""
        if self.folder is None or self.console is None:
            raise RuntimeError("ModelJudge.ask before bind: it has no folder to run its stages in")
        stage_dir = self.folder / stage
        settings = run_stage.Settings(model=self.model, server=self.server, operational=self.operational,
                                      execute=self.execute)
        sampling = Sampling(api="chat", max_tokens=max_tokens, temperature=0.0, top_p=1.0)
        records = [{"id": item_id, "prompt": prompt} for item_id, prompt in prompts.items()]
        if records:
            self.console.print(f"[bold]judge stage {stage}[/]: {len(prompts)} prompt(s) to {self.model}")
        try:
            outcome = run_stage.run(f"{self.label}-judge-{stage}", stage_dir, records, sampling, settings,
                                    self.console, run_dir=stage_dir)
        except run_stage.StageError as exc:
            raise EvalError(f"{exc} (the run's answers or an earlier stage changed since)") from None
        except RunStopped as exc:
            if exc.exit_code == EXIT_INTERRUPTED:
                raise EvalStopped(exc.exit_code, f"interrupted in judge stage {stage}; run the same `hallurun eval` "
                                                 "command again to continue where it stopped") from None
            raise EvalStopped(exc.exit_code, f"judge stage {stage} stopped ({exc}; exit {exc.exit_code}, see the "
                                             f"server's log in {self.folder}); run the same `hallurun eval` command "
                                             "again") from None
        return outcome.generations, outcome.failures


def make_judge(model: str | None, url: str | None, server: ServerSpec, operational: RunOptions, *,
               execute: Executor = in_new_loop) -> Judge:
    """A judge from the CLI's options. No model and no URL: the heuristic. A URL without a model: the first
    model the server lists. `server` is how the judge's server is launched; a URL makes it that external one."""
    if model == HEURISTIC or (model is None and url is None):
        return HeuristicJudge()
    if model is None:
        model = served_model(str(url))
    if url is not None:
        server = dataclasses.replace(server, kind="external", url=url)
    return ModelJudge(model, server=server, operational=operational, execute=execute)


def served_model(url: str) -> str:
    """The first model an OpenAI-compatible server lists at /v1/models."""
    endpoint = url.rstrip("/") + "/v1/models"
    try:
        with urllib.request.urlopen(endpoint, timeout=10) as resp:
            return str(orjson.loads(resp.read())["data"][0]["id"])
    except (OSError, urllib.error.URLError, orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise EvalError(f"cannot learn the judge's model name from {endpoint} ({exc}); give --judge MODEL") from None
