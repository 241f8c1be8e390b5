"""The trained demonstration model (`--model trained`): its seeded plan, a deterministic build that recites the plan
under greedy decoding, and, served by the real vLLM engine, metrics with right, wrong and "I don't know" answers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from hallurun.eval.heuristic import is_abstaining, matches_answer
from hallurun.server import launch, trained_model
from hallurun.tasks.mixedentities.questions import believes_exists
from tests.conftest import Hallurun, read_jsonl

STARTUP = "300"  # seconds a cold vLLM start may take on a busy 2-core machine


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _gold() -> dict[str, str]:
    return {r["id"]: r["answer"] for r in read_jsonl(trained_model.PRECISEWIKIQA)}


def test_the_plan_is_seeded_and_reads_to_the_heuristic_judge_as_intended() -> None:
    plan = trained_model.plan()
    assert plan == trained_model.plan()
    questions, entities = read_jsonl(trained_model.PRECISEWIKIQA), read_jsonl(trained_model.MIXEDENTITIES)
    assert len({e.id for e in plan}) == len(plan)  # one entry per question and per entity
    assert sorted(e.id for e in plan) == sorted(r["id"] for r in questions + entities)

    gold = _gold()
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    for e in plan:
        kinds[e.bin][e.kind] += 1
        if e.task == "precisewikiqa":
            abstains = is_abstaining(e.target)
            assert abstains == (e.kind == "abstain"), e
            if not abstains:
                assert matches_answer(e.target, gold[e.id]) == (e.kind == "right"), e
        else:
            assert believes_exists(e.target) == (e.kind == "fabricate"), e
    right = [kinds[str(b)]["right"] for b in range(10)]
    assert right == sorted(right) and right[0] < right[9]  # fewer right answers in the rarer bins
    assert all(kinds[str(b)]["wrong"] and kinds[str(b)]["abstain"] for b in range(10))
    for kind_of in ("animal", "plant", "bacterium", "medicine"):
        assert 0 < kinds[kind_of]["fabricate"] < kinds[kind_of]["refuse"]


def test_resolve_and_the_launch_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALLURUN_CACHE", str(tmp_path))
    assert trained_model.resolve("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    folder = trained_model.model_dir()
    assert folder.parent == tmp_path and folder.name.startswith(trained_model.TRAINED_DIR + "-")
    assert launch.model_path("trained", build_tiny=False) == str(folder)  # what `hallurun doctor` plans
    assert not any(tmp_path.iterdir())  # nothing was built


def test_hallurun_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'tokenizers'): sys.modules[name] = None\n"
        "from hallurun.server import trained_model\n"
        "assert trained_model.resolve('x') == 'x' and len(trained_model.plan()) == 220\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the built model where `--model trained` finds it (HALLURUN_CACHE=cache)."""
    root = tmp_path_factory.mktemp("cache")
    trained_model.build(root / trained_model.model_dir().name)
    return root


@pytest.fixture(scope="module")
def built(cache: Path) -> Path:
    return cache / trained_model.model_dir().name


@pytest.mark.torch
def test_greedy_decoding_recites_the_plan(built: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config.hidden_size // model.config.num_attention_heads == 64  # the CPU attention kernel needs >16
    planned = read_jsonl(built / "plan.jsonl")
    assert [p["id"] for p in planned] == [e.id for e in trained_model.plan()]
    assert "a demonstration, not a model" in (built / "README.md").read_text()

    answers = {}
    with torch.no_grad():
        for p in planned:  # one prompt at a time, unpadded, like the server; real generate()
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                                     add_generation_prompt=True)
            ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out = model.generate(ids, max_new_tokens=64, do_sample=False)[0, ids.shape[1]:].tolist()
            assert out[-1] == tokenizer.eos_token_id, p  # stopped by EOS, not by the length limit
            answers[p["id"]] = tokenizer.decode(out, skip_special_tokens=True)
    assert answers == {p["id"]: p["target"] for p in planned}

    # What the heuristic judge will make of it, bin by bin: right answers fall from popular to rare bins.
    gold = _gold()
    right = Counter(p["bin"] for p in planned if p["task"] == "precisewikiqa"
                    and not is_abstaining(answers[p["id"]]) and matches_answer(answers[p["id"]], gold[p["id"]]))
    assert right["9"] > right["5"] > right["0"] > 0
    assert any(p["kind"] == "wrong" for p in planned) and any(p["kind"] == "abstain" for p in planned)


@pytest.mark.torch
def test_a_built_model_is_not_built_again(built: Path) -> None:
    # (Two fresh builds gave byte-identical files when this was written: seeded data, initialisation and order,
    # one training thread. A second build costs ~25 s of CI, so it is not repeated here.)
    before = _digest(built)
    mtime = (built / "model.safetensors").stat().st_mtime_ns
    assert trained_model.build(built) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == mtime and _digest(built) == before


@pytest.mark.vllm
def test_served_by_vllm_it_scores_right_wrong_and_abstained(hallurun: Hallurun, cache: Path,
                                                             tmp_path: Path) -> None:
    env = {"HALLURUN_CACHE": str(cache)}
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", "precisewikiqa", "--model", "trained", "--run-dir", str(run_dir),
                        "--startup-timeout", STARTUP, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The engine gave each planned answer: vLLM's bfloat16 CPU kernels keep the greedy choices.
    planned = {p["id"]: p["target"] for p in read_jsonl(cache / trained_model.model_dir().name / "plan.jsonl")}
    generated = {r["id"]: r["generation"] for r in read_jsonl(run_dir / "generation.jsonl")}
    assert len(generated) == 120
    assert sum(generated[i].strip() == planned[i] for i in generated) >= 114, generated
    proc = hallurun.run("eval", str(run_dir), timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = orjson.loads((run_dir / "eval_results.json").read_bytes())
    assert results["correct_rate"] > 0 and results["halu_Rate"] > 0 and results["refusal_rate"] > 0
    bins = results["by_h_score_cat"]
    assert bins["9"]["correct_rate"] > bins["0"]["correct_rate"]
