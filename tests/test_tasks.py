"""The shipped tasks and data: they load, validate, and hold what their READMEs promise; user task folders and the
MixedEntities task run end to end against the mock server."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import orjson
import pytest

from hallurun.eval.metrics import JUDGE_FAILED, UNPARSEABLE
from hallurun.eval.scoring import Column, Scoring, ScoringError, validate
from hallurun.store.dataset import scan
from hallurun.tasks import registry as tasks
from hallurun.tasks.mixedentities import names as mixedentities
from hallurun.tasks.plugin import TaskPlugin
from hallurun.tasks.precisewikiqa.passages import approx_tokens, passages
from tests.conftest import REPO, Hallurun, read_jsonl

TASKS = REPO / "hallurun" / "tasks"
CUSTOM = REPO / "examples" / "custom_task"


@pytest.mark.parametrize(("name", "evaluator", "max_tokens", "count"), [
    ("precisewikiqa", "precisewikiqa", 256, 120),
    ("mixedentities", "mixedentities", 256, 100),
    ("longwiki", "longwiki", 1024, 20),
])
def test_builtin_tasks_load_and_their_data_validates(name: str, evaluator: str, max_tokens: int, count: int) -> None:
    task = tasks.resolve(name)
    assert task.name == name and task.evaluator == evaluator
    assert task.defaults == {"api": "chat", "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0}
    assert scan(task.dataset).count == count


def test_the_clis_task_choices_come_from_the_registry(hallurun: Hallurun, tmp_path: Path) -> None:
    listed = hallurun.run("eval", "--help").stdout
    assert f"[{'|'.join(tasks.evaluators())}]" in " ".join(listed.split())
    assert f"[{'|'.join(tasks.generators())}]" in " ".join(hallurun.run("generate", "--help").stdout.split())
    proc = hallurun.run("eval", str(tmp_path), "--evaluator", "generatedentities")
    assert proc.returncode == 2 and "Invalid value for '--evaluator'" in proc.stderr, proc.stderr
    proc = hallurun.run("generate", "--task", "longwiki", "--docs", str(tmp_path / "d.jsonl"), "--model", "m",
                        "--n", "1")
    assert proc.returncode == 2 and "Invalid value for '--task': 'longwiki'" in proc.stderr, proc.stderr


def test_tasks_command_lists_every_builtin_task(hallurun: Hallurun) -> None:
    proc = hallurun.run("tasks")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {"precisewikiqa", "mixedentities", "longwiki"} <= listed


def test_goodwiki_sample_has_three_articles_per_bin_in_goodwiki_format() -> None:
    docs = read_jsonl(TASKS / "precisewikiqa" / "goodwiki_sample.jsonl")
    assert Counter(d["h_score_cat"] for d in docs) == dict.fromkeys(range(10), 3)
    assert len({d["title"] for d in docs}) == 30
    for doc in docs:
        assert set(doc) == {"title", "pageid", "revid", "description", "categories", "h_score_cat", "document"}
        assert doc["pageid"] is None and doc["revid"] is None
        assert doc["description"] and doc["categories"] and all(isinstance(c, str) for c in doc["categories"])
        assert 400 <= len(doc["document"].split()) <= 900, doc["title"]
        assert doc["document"].count("\n## ") >= 3, doc["title"]


def test_longwiki_references_are_500_to_750_token_sections_of_the_sample_articles() -> None:
    items = read_jsonl(TASKS / "longwiki" / "questions.jsonl")
    docs = {d["title"]: d for d in read_jsonl(TASKS / "precisewikiqa" / "goodwiki_sample.jsonl")}
    assert Counter(i["h_score_cat"] for i in items) == dict.fromkeys(range(10), 2)
    for item in items:
        assert set(item) == {"id", "title", "h_score_cat", "reference", "prompt"}
        assert 500 <= approx_tokens(item["reference"]) <= 750
        doc = docs[item["title"]]
        assert item["h_score_cat"] == doc["h_score_cat"]
        assert item["reference"] in passages(doc["document"], 500, 750)
        assert item["prompt"][-1] in "?." and len(item["prompt"].split()) >= 12


def test_mixedentities_file_is_the_seeded_build_and_no_name_is_real(hallurun: Hallurun, tmp_path: Path) -> None:
    shipped = TASKS / "mixedentities" / "entities.jsonl"
    assert mixedentities.build(100, 0) == read_jsonl(shipped)
    proc = hallurun.run("build-entities", "--n", "100", "--seed", "0", "--out", str(tmp_path / "e.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e.jsonl").read_bytes() == shipped.read_bytes()

    records = read_jsonl(shipped)
    assert Counter(r["type"] for r in records) == dict.fromkeys(mixedentities.KINDS, 25)
    assert len({r["name"] for r in records}) == 100
    real = {kind: mixedentities.NearIndex(names) for kind, names in mixedentities.real_names().items()}
    taxa = orjson.loads((TASKS / "mixedentities" / "taxa.json").read_bytes())["genera"]
    family = {g["genus"]: g["family"] for g in taxa}
    for record in records:
        assert set(record) == {"id", "name", "type", "prompt", "parts"}
        assert record["name"] in record["prompt"] and record["type"] in record["prompt"]
        assert record["name"] not in real[record["type"]], record["name"]  # not real, not a misspelling of one
        parts = record["parts"]
        if record["type"] == "medicine":
            assert parts["prefix_from"].startswith(parts["prefix"]) and parts["stem_from"].endswith(parts["stem"])
            assert not parts["stem_from"].endswith(parts["prefix_from"][len(parts["prefix"]):])  # another class
        else:
            assert record["name"] == f"{parts['genus']} {parts['epithet']}"
            assert family[parts["epithet_from"].split()[0]] != family[parts["genus"]]
    assert len({r["prompt"].replace(r["name"], "").replace(r["type"], "") for r in records}) >= 5


def test_made_up_names_keep_away_from_every_listed_real_name() -> None:
    real = mixedentities.real_names()
    for entity in mixedentities.organism_candidates() + mixedentities.medicine_candidates():
        assert entity.name.lower() not in real[entity.type]
    assert mixedentities.is_near_real("Loratidine", real["medicine"])  # a misspelling of loratadine counts as real
    assert mixedentities.is_near_real("Panthera leo", real["animal"])
    assert not mixedentities.is_near_real("Orcinus komodoensis", real["animal"])
    assert mixedentities.distance("kitten", "sitting", limit=5) == 3
    assert mixedentities.distance("abc", "abcdefgh") > mixedentities.NEAR
    index = mixedentities.NearIndex(["atorvastatin", "Felis leo"])
    assert "Atorvastatine" in index and "felis lea" in index and "Atorvapril" not in index


def test_build_is_deterministic_per_seed_and_balanced() -> None:
    assert mixedentities.build(10, 1) == mixedentities.build(10, 1)
    assert mixedentities.build(10, 1) != mixedentities.build(10, 2)
    assert Counter(r["type"] for r in mixedentities.build(10, 1)) == {"animal": 3, "plant": 3, "bacterium": 2,
                                                                      "medicine": 2}


def test_mixedentities_inference_on_the_mock_server(hallurun: Hallurun, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", "mixedentities", "--model", "m", "--server", "mock",
                        "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    generation = read_jsonl(run_dir / "generation.jsonl")
    assert [g["id"] for g in generation] == [r["id"] for r in read_jsonl(TASKS / "mixedentities" / "entities.jsonl")]
    assert set(generation[0]) == {"id", "name", "type", "prompt", "parts", "generation"}
    config = orjson.loads((run_dir / "manifest.json").read_bytes())["config"]
    assert config["evaluator"] == "mixedentities" and config["sampling"]["max_tokens"] == 256


def test_a_user_task_folder_runs_like_a_builtin_task(hallurun: Hallurun, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", str(CUSTOM), "--model", "m", "--server", "mock",
                        "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    generation = read_jsonl(run_dir / "generation.jsonl")
    assert len(generation) == 12 and set(generation[0]) == {"id", "prompt", "country", "answer", "generation"}
    config = orjson.loads((run_dir / "manifest.json").read_bytes())["config"]
    # The folder scores its answers with its own code; the run records where that code is.
    assert config["task"] == "capitals" and config["evaluator"] == str((CUSTOM / "scoring.py").resolve())
    assert config["sampling"]["max_tokens"] == 64
    # The default run directory is named after the task, from a folder anywhere.
    proc = hallurun.run("inference", "--task", str(CUSTOM), "--model", "m", "--server", "mock", "--limit", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.name.split("-")[0] for p in (tmp_path / "runs").iterdir()] == ["capitals"]


# --- tasks as plugins ---------------------------------------------------------------------------------------


def test_every_task_folder_is_registered_and_every_plugin_is_complete() -> None:
    folders = sorted(p.parent.name for p in TASKS.glob("*/task.json"))
    assert sorted(tasks.BUILTIN) == folders
    assert tasks.evaluators() == ["precisewikiqa", "mixedentities", "longwiki"]
    assert list(tasks.generators()) == ["precisewikiqa"]
    for name, plugin in tasks.BUILTIN.items():
        assert plugin.folder == TASKS / name and plugin.scoring is not None
        assert tasks.scoring(name) is plugin.scoring and validate(plugin.scoring) is plugin.scoring
        metrics, bins = plugin.scoring.metrics([])
        assert {c.key for c in plugin.scoring.headline} <= set(metrics) and bins == {}
        assert {UNPARSEABLE, JUDGE_FAILED} <= set(metrics["counts"])


def _scoring(headline: tuple[Column, ...], counts: dict[str, int] | None = None) -> Scoring:
    base = tasks.scoring("mixedentities")
    return Scoring(name="partial", need=base.need, judge=base.judge, decisions=base.decisions, headline=headline,
                   metrics=lambda judgments: ({"refusal_rate": None, "counts": counts or {}}, {}))


def test_a_scoring_missing_from_the_report_tables_fails_when_it_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ScoringError, match="its metrics lack f1"):
        validate(_scoring((Column("refusal_rate", "refusal rate"), Column("f1", "F1"))))
    with pytest.raises(ScoringError, match=r"counts\.unparseable, counts\.judge_failed"):
        validate(_scoring((Column("refusal_rate", "refusal rate"),)))
    assert validate(_scoring((Column("refusal_rate", "refusal rate"),), {UNPARSEABLE: 0, JUDGE_FAILED: 0}))
    # The registry's check at import refuses a built-in plugin whose scoring is incomplete.
    broken = TaskPlugin(folder=TASKS / "mixedentities", scoring=_scoring((Column("f1", "F1"),)))
    monkeypatch.setitem(tasks.BUILTIN, "mixedentities", broken)
    with pytest.raises(ScoringError, match="its metrics lack f1"):
        tasks._check_builtins()


def test_task_folders_name_their_scoring_and_bad_references_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "d.jsonl").write_text('{"prompt": "p"}\n')
    for spec, says in (({"eval": "nosuch"}, "unknown evaluation 'nosuch'"),
                       ({"eval": "precisewikiqa", "scoring": "s.py"}, "not both"),
                       ({"scoring": "s.py"}, "scoring file not found")):
        (folder / "task.json").write_bytes(orjson.dumps({"name": "t", "data": "d.jsonl", **spec}))
        with pytest.raises(tasks.TaskError, match=says):
            tasks.resolve(str(folder))
    (folder / "s.py").write_text("SCORING = 1\n")
    with pytest.raises(tasks.TaskError, match="defines no SCORING"):
        tasks.resolve(str(folder))
    (folder / "s.py").write_text("raise RuntimeError('oops')\n")
    with pytest.raises(tasks.TaskError, match=r"importing it failed \(RuntimeError: oops"):
        tasks.resolve(str(folder))
    (folder / "task.json").write_bytes(orjson.dumps({"name": "t", "data": "d.jsonl", "eval": "longwiki"}))
    assert tasks.resolve(str(folder)).evaluator == "longwiki"
    with pytest.raises(tasks.TaskError, match="unknown evaluator 'nosuch'"):
        tasks.scoring("nosuch")


def test_no_module_outside_the_tasks_package_names_a_task() -> None:
    """No string constant in code outside hallurun/tasks/ is a task's name: behaviour is chosen through the
    task's plugin, never by comparing names (prose that mentions a task, such as a usage example, is fine)."""
    # The demonstration model memorizes the built-in tasks' own prompts: it names the files it trains on and
    # labels its plan by them, and chooses no task's behaviour.
    trains_on_them = REPO / "hallurun" / "server" / "trained_model.py"
    outside = [p for p in (REPO / "hallurun").rglob("*.py") if TASKS not in p.parents and p != trains_on_them]
    assert outside and trains_on_them.is_file()
    for path in outside:
        named = {node.value for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Constant) and node.value in tasks.BUILTIN}
        assert not named, f"{path} names the task(s) {named}: choose behaviour through the plugin"
