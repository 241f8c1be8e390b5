"""`hallurun generate --task precisewikiqa`: a PreciseWikiQA question file from GoodWiki-style documents.

The recipe follows HalluLens: spread N questions evenly over the popularity bins (`h_score_cat`), take a random
200–500-token passage from a document of each bin, ask a generator model for one question with a short answer,
then ask it again whether that question is answerable from the passage alone with exactly that answer, and
keep only the questions it confirms.

Both request stages run through the ordinary runner (`hallurun.core.stage`), so they are supervised and resumable:
the same command run again continues where it stopped. Everything up to the generator's replies is a pure
function of the documents, N and the seed.

Work folder (`<out>.work/`): `questions/` and `answerability/` (each a prompt file and a run directory) and
`summary.json` (counts per bin).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from hallurun.config import Sampling
from hallurun.core import stage
from hallurun.errors import RunStopped, UsageError
from hallurun.store.durable import write_atomic
from hallurun.store.jsonl import JsonlError, read_objects
from hallurun.tasks.plugin import Generated
from hallurun.tasks.precisewikiqa import qgen
from hallurun.tasks.precisewikiqa.passages import passages

BINS = tuple(range(10))
PASSAGE_TOKENS = (200, 500)
# The generator answers deterministically; a question needs room for some preamble, a verdict very little.
QUESTION_SAMPLING = Sampling(api="chat", max_tokens=512, temperature=0.0, top_p=1.0)
CHECK_SAMPLING = Sampling(api="chat", max_tokens=32, temperature=0.0, top_p=1.0)
OUTPUT_FIELDS = ("id", "title", "h_score_cat", "pageid", "revid", "description", "categories", "reference",
                 "prompt", "answer")


class GenerateError(UsageError):
    """Unusable documents or arguments: a one-line message naming file, line and field (exit code 2)."""


@dataclass(frozen=True)
class Document:
    """One GoodWiki-style article."""

    title: str
    h_score_cat: int
    document: str
    pageid: Any = None
    revid: Any = None
    description: str | None = None
    categories: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Pick:
    """A passage chosen to become one question."""

    id: str
    doc: Document
    passage: str


@dataclass
class BinCounts:
    """What happened to one popularity bin's share of the questions."""

    wanted: int = 0
    picked: int = 0  # passages found (fewer than wanted when the bin's documents are few or short)
    asked: int = 0  # question requests answered
    unparseable: int = 0  # replies with no usable question/answer pair
    checked: int = 0  # answerability verdicts received
    rejected: int = 0  # verdict "no"
    unclear: int = 0  # verdict neither yes nor no
    failed: int = 0  # requests that failed in either stage
    kept: int = 0


def _bin(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and value in BINS else None


def read_documents(path: Path) -> list[Document]:
    """Read a GoodWiki-style JSONL file: `title`, `document`, `h_score_cat` (0–9), optional metadata."""
    if not path.is_file():
        raise GenerateError(f"{path}: documents file not found")
    docs: list[Document] = []
    try:
        lines = list(read_objects(path))
    except JsonlError as exc:
        raise GenerateError(str(exc)) from None
    for line_no, record in lines:
        for name in ("title", "document"):
            if not isinstance(record.get(name), str) or not record[name].strip():
                raise GenerateError(f"{path}:{line_no}: field {name!r}: must be a non-empty string")
        popularity = _bin(record.get("h_score_cat"))
        if popularity is None:
            raise GenerateError(f"{path}:{line_no}: field 'h_score_cat': must be a popularity bin 0–9")
        categories = record.get("categories")
        docs.append(Document(
            title=record["title"].strip(), h_score_cat=popularity, document=record["document"],
            pageid=record.get("pageid"), revid=record.get("revid"), description=record.get("description"),
            categories=list(categories) if isinstance(categories, list) else [],
        ))
    if not docs:
        raise GenerateError(f"{path}: no documents")
    return docs


def quotas(n: int, bins: list[int]) -> dict[int, int]:
    """N spread evenly over `bins`; the first N mod len(bins) bins (lowest first) take one more."""
    share, extra = divmod(n, len(bins))
    return {b: share + (1 if i < extra else 0) for i, b in enumerate(sorted(bins))}


def select(docs: list[Document], n: int, seed: int) -> tuple[list[Pick], dict[int, BinCounts]]:
    """Choose N passages spread evenly over the popularity bins present in `docs`.

    Within a bin the documents are shuffled and visited in turn, each giving one random passage per visit,
    so a bin with fewer documents than its share reuses documents (different passages) before giving up.
    Each bin draws from its own seeded generator: adding documents to one bin changes no other bin.
    """
    by_bin: dict[int, list[Document]] = {}
    for doc in docs:
        by_bin.setdefault(doc.h_score_cat, []).append(doc)
    counts = {b: BinCounts(wanted=q) for b, q in quotas(n, list(by_bin)).items()}
    picks: list[Pick] = []
    for popularity in sorted(by_bin):
        rng = random.Random(f"hallurun-generate:{seed}:{popularity}")
        members = by_bin[popularity][:]
        rng.shuffle(members)
        pools = []
        for doc in members:
            found = passages(doc.document, *PASSAGE_TOKENS)
            rng.shuffle(found)
            if found:
                pools.append((doc, found))
        slot = 0
        while slot < counts[popularity].wanted and any(pool for _, pool in pools):
            for doc, pool in pools:
                if slot == counts[popularity].wanted:
                    break
                if pool:
                    picks.append(Pick(f"b{popularity}-{slot:04d}", doc, pool.pop()))
                    slot += 1
        counts[popularity].picked = slot
    return picks, counts


def _question_records(picks: list[Pick]) -> list[dict[str, Any]]:
    return [{"id": p.id, "prompt": qgen.question_request(p.doc.title, p.passage), "title": p.doc.title,
             "h_score_cat": p.doc.h_score_cat} for p in picks]


def _output_record(pick: Pick, qa: qgen.QA) -> dict[str, Any]:
    doc = pick.doc
    record = {"id": pick.id, "title": doc.title, "h_score_cat": doc.h_score_cat, "pageid": doc.pageid,
              "revid": doc.revid, "description": doc.description, "categories": doc.categories,
              "reference": pick.passage, "prompt": qa.question, "answer": qa.answer}
    return {k: record[k] for k in OUTPUT_FIELDS}



def default_out(model: str, n: int, seed: int) -> Path:
    """A name that is the same for the same command, so running it again continues the same job."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/").split("/")[-1])
    return Path(f"precisewikiqa-{safe}-n{n}-seed{seed}.jsonl")


def work_folder(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def generate(docs_path: Path, n: int, seed: int, out: Path, settings: stage.Settings,
             console: Console | None = None) -> Generated:
    """Build the question file at `out`; returns what was kept and how many requests failed. Raises UsageError
    subclasses (GenerateError, stage.StageError, ...) for bad usage, and RunStopped when a stage stopped before
    it finished (the same command continues it)."""
    console = console or Console(soft_wrap=True)
    if n < 1:
        raise GenerateError("--n must be at least 1")
    docs = read_documents(docs_path)
    picks, counts = select(docs, n, seed)
    work = work_folder(out)
    short = [b for b, c in counts.items() if c.picked < c.wanted]
    if short:
        console.print("[yellow]too few passages of 200–500 tokens for bins " + ", ".join(
            f"{b} ({counts[b].picked}/{counts[b].wanted})" for b in short) + "[/yellow]")

    asked = _stage("precisewikiqa-questions", work / "questions", _question_records(picks), QUESTION_SAMPLING,
                   settings, console)
    drafted: list[tuple[Pick, qgen.QA]] = []
    for pick in picks:
        tally = counts[pick.doc.h_score_cat]
        if pick.id not in asked.generations:
            tally.failed += 1
            continue
        tally.asked += 1
        qa = qgen.parse_qa(asked.generations[pick.id])
        if qa is None:
            tally.unparseable += 1
        else:
            drafted.append((pick, qa))

    checks = [{"id": p.id, "prompt": qgen.check_request(p.doc.title, p.passage, qa.question, qa.answer),
               "title": p.doc.title, "h_score_cat": p.doc.h_score_cat} for p, qa in drafted]
    checked = _stage("precisewikiqa-answerability", work / "answerability", checks, CHECK_SAMPLING, settings,
                     console)
    kept: list[dict[str, Any]] = []
    for pick, qa in drafted:
        tally = counts[pick.doc.h_score_cat]
        if pick.id not in checked.generations:
            tally.failed += 1
            continue
        tally.checked += 1
        verdict = qgen.parse_verdict(checked.generations[pick.id])
        if verdict is None:
            tally.unclear += 1
        elif not verdict:
            tally.rejected += 1
        else:
            tally.kept += 1
            kept.append(_output_record(pick, qa))

    write_atomic(out, b"".join(orjson.dumps(r) + b"\n" for r in kept))
    summary = {"documents": str(docs_path), "n": n, "seed": seed, "out": str(out), "kept": len(kept),
               "bins": {str(b): asdict(c) for b, c in sorted(counts.items())}}
    write_atomic(work / "summary.json", orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    console.print(report_table(counts))
    console.print(f"kept {len(kept)} of {len(picks)} questions → {out}  (details: {work / 'summary.json'})",
                  highlight=False)
    if not kept:
        console.print("[red]no question survived; see the stage results under " + str(work) + "[/red]")
    return Generated(out, len(kept), asked.failed + checked.failed)


def _stage(name: str, folder: Path, records: list[dict[str, Any]], sampling: Sampling, settings: stage.Settings,
           console: Console) -> stage.Outcome:
    """One stage of the generation; one that stops is raised as RunStopped saying how to continue."""
    try:
        return stage.run(name, folder, records, sampling, settings, console)
    except RunStopped as exc:
        raise RunStopped(exc.exit_code, f"generation stopped in stage {name} ({exc}); run the same "
                                        "`hallurun generate` command again to continue") from None


def report_table(counts: dict[int, BinCounts]) -> Table:
    """Per bin: wanted, passages found, replies, dropped for each reason, kept."""
    table = Table(title="questions per popularity bin")
    columns = ("bin", "wanted", "passages", "unparseable", "rejected", "unclear", "failed", "kept")
    for name in columns:
        table.add_column(name, justify="right")
    for b, c in sorted(counts.items()):
        table.add_row(str(b), str(c.wanted), str(c.picked), str(c.unparseable), str(c.rejected), str(c.unclear),
                      str(c.failed), str(c.kept))
    total = BinCounts()
    for c in counts.values():
        for key, value in asdict(c).items():
            setattr(total, key, getattr(total, key) + value)
    table.add_row("all", *(str(getattr(total, k)) for k in ("wanted", "picked", "unparseable", "rejected", "unclear",
                                                             "failed", "kept")), style="bold")
    return table
