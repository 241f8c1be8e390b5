"""The tiny local model: builds offline, deterministically and atomically, and loads with transformers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from hallurun.server import tiny_model


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resolve_passes_other_names_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALLURUN_CACHE", str(tmp_path))
    assert tiny_model.cache_dir() == tmp_path
    assert tiny_model.resolve("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert tiny_model.resolve("/models/local") == "/models/local"
    assert not any(tmp_path.iterdir())  # nothing was built for them


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALLURUN_CACHE", raising=False)
    assert tiny_model.cache_dir() == Path.home() / ".cache" / "hallurun"


def test_hallurun_imports_without_torch() -> None:
    # Block the heavy modules: importing the module (and resolving other names) must not need them.
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'tokenizers'): sys.modules[name] = None\n"
        "from hallurun.server import tiny_model\n"
        "assert tiny_model.resolve('x') == 'x'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # `make install` brings torch and transformers (with vLLM): their absence is a broken setup, not a skip.
    return tiny_model.build(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.mark.torch
def test_build_writes_a_loadable_model(built: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in built.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # temp folder gone

    config = AutoConfig.from_pretrained(built)
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 2, 2)
    assert config.num_key_value_heads == 1
    assert config.hidden_size // config.num_attention_heads == 64  # the CPU attention kernel needs >16
    assert config.intermediate_size == 256
    assert config.max_position_embeddings == 2048
    assert config.vocab_size == tiny_model.VOCAB_SIZE

    tokenizer = AutoTokenizer.from_pretrained(built)
    assert len(tokenizer) <= config.vocab_size
    assert tokenizer.bos_token == tiny_model.BOS
    assert tokenizer.eos_token == tiny_model.EOS
    assert tokenizer.pad_token == tiny_model.PAD
    assert config.eos_token_id == tokenizer.eos_token_id

    text = "What is the capital of France?"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )

    model = AutoModelForCausalLM.from_pretrained(built)
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], config.vocab_size)
    assert torch.isfinite(logits.float()).all()


@pytest.mark.torch
def test_build_is_idempotent_and_deterministic(built: Path, tmp_path: Path) -> None:
    before = _digest(built)
    mtime = (built / "model.safetensors").stat().st_mtime_ns
    assert tiny_model.build(built) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert _digest(built) == before
    # A fresh build elsewhere produces the same bytes: the seed and the tokenizer training are fixed.
    assert _digest(tiny_model.build(tmp_path / "again")) == before


def test_build_refuses_a_foreign_folder(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        tiny_model.build(target)
    assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.torch
def test_resolve_tiny_builds_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALLURUN_CACHE", str(tmp_path / "cache"))
    first = tiny_model.resolve("tiny")
    assert first == str(tmp_path / "cache" / "tiny-llama")
    mtime = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert tiny_model.resolve("tiny") == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == mtime
