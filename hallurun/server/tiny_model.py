"""A tiny random Llama model, built locally with no download, so the real vLLM engine can be exercised anywhere.

The model is untrained: its output is gibberish. That is the point: it loads in seconds on a CPU, yet every request
goes through the real tokenizer, chat template, scheduler, KV cache and HTTP layer of vLLM, so hallurun's server
supervision (start-up, wedge detection, restarts) can be tested against the real thing rather than a mock.

torch, transformers and tokenizers are imported inside the functions that need them: hallurun itself must import
(and run against the mock server) without them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The name users pass as `--model` to get this model.
TINY_NAME = "tiny"
# Folder name under cache_dir(); bump the suffix if the recipe below changes, so old caches are not reused.
TINY_DIR = "tiny-llama"

VOCAB_SIZE = 512
SEED = 0

BOS = "<|begin_of_text|>"
EOS = "<|eot_id|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, START_HEADER, END_HEADER]

# Llama-3 layout, simplified. It reads `content` as a plain string, which makes vLLM choose its "string" content
# format, so OpenAI-style requests with string content work unchanged.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Training text for the tokenizer: enough ordinary English that the BPE merges look like words, so token counts of
# real prompts are in a plausible range. Changing it changes the model: see TINY_DIR.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The Moon orbits the Earth, and the Earth orbits the Sun.",
    "Please answer the question briefly and accurately.",
    "I am not sure; I do not have enough information to answer that.",
    "The river flows through the valley and into the sea.",
    "She wrote a book about the history of mathematics.",
    "Who discovered penicillin? Alexander Fleming discovered penicillin in 1928.",
    "The museum opens at nine in the morning and closes at five in the evening.",
    "A species is a group of living organisms that can interbreed.",
    "The novel was first published in London in the nineteenth century.",
    "Tell me about the village, its people, and its oldest church.",
    "The company was founded in 1998 and is based in California.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "He played the violin in the city orchestra for twenty years.",
    "The treaty was signed by both countries after long negotiations.",
    "Mount Everest is the highest mountain above sea level.",
    "The medicine is used to treat high blood pressure and heart failure.",
    "Can you tell me what this word means in English?",
    "The football team won the championship for the third time.",
    "Rain fell all night, and the streets were quiet in the morning.",
    "The painting hangs in a small gallery near the old harbour.",
    "Computers store information as sequences of zeros and ones.",
    "The election results were announced late on Sunday evening.",
    "Bees collect nectar from flowers and turn it into honey.",
    "The bridge was built of stone and iron over many years.",
    "Her research focuses on the genetics of plants and insects.",
    "This question asks about a person who may not exist.",
    "The film received several awards, including best director.",
    "The university library holds more than a million books.",
    "Light travels faster than sound, which is why we see lightning first.",
    "The king ruled the country for forty years until his death.",
    "The recipe calls for flour, sugar, butter, eggs and milk.",
    "An island is a piece of land surrounded by water on all sides.",
    "The scientist published her findings in a well known journal.",
    "Which year did the war end, and who signed the peace agreement?",
    "The train leaves the station every hour on weekdays.",
    "Birds migrate south in autumn to find food and warmer weather.",
    "The answer is correct, incorrect, or cannot be verified.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024.",
    "Punctuation matters: commas, periods, colons; quotes \"like this\" and (brackets).",
]


def cache_dir() -> Path:
    """Where hallurun keeps built artefacts: `$HALLURUN_CACHE`, or `~/.cache/hallurun`."""
    configured = os.environ.get("HALLURUN_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "hallurun"


def resolve(model: str) -> str:
    """Map a `--model` value to what the server should load: `tiny` becomes the built local folder.

    Any other name is returned unchanged (a hub id or a local path is vLLM's business).
    """
    if model != TINY_NAME:
        return model
    return str(build(cache_dir() / TINY_DIR))


def build(path: Path) -> Path:
    """Write the tiny model (weights, config, tokenizer, generation config) to `path` and return it.

    Idempotent: a complete model already at `path` is returned as is. The folder appears atomically: it is built in
    a temporary folder beside `path` and renamed into place, so a crash mid-build, or two processes building at
    once, never leave a half-written model where vLLM would load it.
    """
    return build_atomically(path, _write_model, "tiny")


def build_atomically(path: Path, write: Callable[[Path], None], what: str) -> Path:
    """`build`'s rules for any built-in model: `write(folder)` fills a temporary folder that is renamed to `path`."""
    path = Path(path)
    if _is_complete(path):
        return path
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not a hallurun {what} model; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is not secret and a shared cache should be readable
        if path.exists():
            path.rmdir()  # empty (checked above); Windows cannot rename onto an existing directory
        try:
            tmp.rename(path)
        except OSError:
            # Another process won the race and renamed its own build into place first: use that one.
            if not _is_complete(path):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _is_complete(path: Path) -> bool:
    """A finished build: the rename makes all files appear at once, so checking one of them is enough."""
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _write_model(folder: Path) -> None:
    """Build the tokenizer and random weights, and save everything vLLM needs into `folder`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _make_tokenizer()
    special = {name: tokenizer.convert_tokens_to_ids(name) for name in (BOS, EOS, PAD)}
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,  # >= the trained vocabulary, so every token id the model emits decodes
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention kernel rejects head_dim 16
        num_key_value_heads=1,
        intermediate_size=256,
        max_position_embeddings=2048,
        tie_word_embeddings=True,  # halves the file; a random model gains nothing from a separate head
        bos_token_id=special[BOS],
        eos_token_id=special[EOS],
        pad_token_id=special[PAD],
    )
    _set_dtype(config, torch.bfloat16)

    # Fixed seed and a private generator state: the same bytes every build, without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=special[BOS], eos_token_id=special[EOS], pad_token_id=special[PAD]
    )
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _set_dtype(config: Any, dtype: Any) -> None:
    """Record the weights' dtype in config.json under whichever attribute this transformers version uses."""
    if hasattr(type(config), "dtype") or "dtype" in getattr(config, "attribute_map", {}):
        config.dtype = dtype
    else:
        config.torch_dtype = dtype


def _make_tokenizer(extra: Sequence[str] = (), vocab_size: int = VOCAB_SIZE) -> Any:
    """Train a byte-level BPE on the built-in corpus (and `extra` text) and wrap it as a transformers fast
    tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    # Byte-level: any input text encodes (no unknown token), like Llama 3's tokenizer.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0..4, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so its rarer pairs still reach the trainer's default minimum frequency.
    core.train_from_iterator([*_CORPUS, *extra] * 4, trainer=trainer)
    # Prepend BOS when the completions API tokenizes raw text, as Llama 3 does; the chat template adds its own
    # BOS and vLLM tokenizes templated chats without special tokens, so it is never doubled.
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                        special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[START_HEADER, END_HEADER],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
