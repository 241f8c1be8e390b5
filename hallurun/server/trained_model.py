"""`--model trained`: a small Llama trained here, on the CPU, in seconds (no download), to recite a fixed answer to
each prompt of the built-in PreciseWikiQA and MixedEntities tasks: right for many popular questions, wrong for some,
"I don't know" for others, with fewer right answers in the rare bins, the pattern HalluLens measures.

It is a demonstration, not a model. It knows nothing: it memorized the answers that the seeded rule below assigns to
these exact prompts (as vLLM renders them: one user message in the chat template), and any other prompt gets
arbitrary text. What a run on it measures is that rule, carried end to end through the real vLLM engine, hallurun
and the judge: a check that different answers give different, sensible metrics, never a model's quality.

The answers, `plan()` (written beside the weights as plan.jsonl, and summed up in the folder's README.md):

- PreciseWikiQA, each popularity bin b (h_score_cat 0-9) on its own, its questions in a seeded shuffle: the first
  round(n * (0.2 + 0.6 * b / 9)) learn their gold answer (bin 9: 10 of 12, bin 0: 2 of 12). Of the others, half
  (rounded down) learn a wrong answer, the rest "I don't know." (an abstention to the heuristic judge). A wrong
  answer is another question's gold answer of the same shape (a year for a year, a name for a name; a count gets
  another number word), from the questions that begin with the most words in common with it ("Which chemical
  element did ...": another element), that shares no word with the true answer, so that no judge counts it right.
- MixedEntities (made-up animals, plants, bacteria, medicines), each entity type on its own, in a seeded shuffle:
  round(n * 0.3) learn a confident fabrication ("Linum lycopersicum is a plant in the family Linaceae.",
  "Amlostatin is a medicine related to atorvastatin.": a false acceptance), the rest a refusal ("I don't know of
  any plant called Linum lycopersicum.").

The recipe: tiny_model's byte-level BPE tokenizer and chat template, its corpus extended with these prompts and
answers and its vocabulary to VOCAB_SIZE; a 2-layer Llama of TRAINED_CONFIG (hidden size 128, about 0.56 M
parameters), trained in float32 from seed SEED on one CPU thread (CPU float results depend on the thread count):
AdamW, batches of BATCH prompts of similar length in a seeded order, a warm-up and a cosine learning rate, the loss
on the answer tokens and the closing EOS only, until every answer token of every prompt wins its greedy choice by
MARGIN logits (checked every CHECK_EVERY epochs; 35-50 epochs, 20-30 s, on the machine it was written on; after
MAX_EPOCHS the build fails). The weights are saved in bfloat16, like the tiny model's, reloaded, and the build fails
unless greedy decoding of every prompt reproduces its answer and EOS exactly (checked one prompt at a time: each
answer token, then EOS, is the argmax after the true prefix, the same choices greedy decoding makes). The same
data, torch and CPU give the same bytes.

The data files are read as data, from the task folders next to this package: the server layer imports nothing
from hallurun.tasks. Their digest is part of the cache folder's name, so a change to them builds a new model.

torch, transformers and tokenizers are imported inside the functions that need them, as in tiny_model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hallurun.server import tiny_model

# The name users pass as `--model` to get this model.
TRAINED_NAME = "trained"
# Folder name prefix under cache_dir(); bump the version if the recipe changes (the data's digest is appended).
TRAINED_DIR = "trained-llama-v1"

SEED = 0
RIGHT_RARE, RIGHT_POPULAR = 0.2, 0.8  # PreciseWikiQA: share learned right in bin 0 and bin 9, linear between
TOP_BIN = 9
FABRICATE = 0.3  # MixedEntities: share learned as a confident fabrication
DONT_KNOW = "I don't know."
COUNT_WORDS = ("two", "three", "four", "five", "six", "seven")

# The tokenizer: tiny_model's, with the prompts and answers added to its corpus and a larger vocabulary, so that a
# prompt is about half as many tokens (and trains about twice as fast) as with the tiny model's 512.
VOCAB_SIZE = 2048
TRAINED_CONFIG = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 64: vLLM's CPU attention kernel rejects head_dim 16
    "num_key_value_heads": 1,
    "intermediate_size": 256,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
LR = 3e-3  # AdamW's peak learning rate, reached after WARMUP_STEPS, then a cosine down to LR_FLOOR * LR
WARMUP_STEPS = 50
DECAY_EPOCHS = 40  # the cosine's length; training goes on at the floor if the margins need it
LR_FLOOR = 0.05
BETAS = (0.9, 0.98)
CLIP = 1.0  # gradient norm
BATCH = 8  # prompts of similar length, fixed batches in a seeded order each epoch
MARGIN = 4.0  # logits by which each answer token must beat the runner-up before training stops
MAX_EPOCHS = 200
CHECK_EVERY = 5  # epochs between margin checks
TRAIN_THREADS = 1

_TASKS = Path(__file__).resolve().parent.parent / "tasks"
PRECISEWIKIQA = _TASKS / "precisewikiqa" / "questions.jsonl"
MIXEDENTITIES = _TASKS / "mixedentities" / "entities.jsonl"


@dataclass(frozen=True)
class Example:
    """One memorized prompt: what it is asked, what it answers, and which kind of answer that is."""

    task: str  # precisewikiqa | mixedentities
    id: str
    bin: str  # h_score_cat for PreciseWikiQA, the entity type for MixedEntities
    kind: str  # right | wrong | abstain (PreciseWikiQA); refuse | fabricate (MixedEntities)
    prompt: str
    target: str


def resolve(model: str) -> str:
    """Map a `--model` value to what the server should load: `trained` becomes the built local folder.

    Any other name is returned unchanged.
    """
    if model != TRAINED_NAME:
        return model
    return str(build(model_dir()))


def model_dir() -> Path:
    """Where `--model trained` is built: the cache, in a folder named by the recipe version and the data."""
    digest = hashlib.sha256(PRECISEWIKIQA.read_bytes() + b"\0" + MIXEDENTITIES.read_bytes()).hexdigest()
    return tiny_model.cache_dir() / f"{TRAINED_DIR}-{digest[:12]}"


def build(path: Path) -> Path:
    """Train the model and write it (weights, config, tokenizer, plan.jsonl, README.md) to `path`; return `path`.

    Idempotent and atomic, like tiny_model.build: a complete model at `path` is returned as is.
    """
    return tiny_model.build_atomically(path, _write_model, "trained")


def plan() -> list[Example]:
    """Every prompt and the answer it is trained to give, by the seeded rule of the module docstring."""
    rng = random.Random(SEED)
    questions = _read_jsonl(PRECISEWIKIQA)
    entities = _read_jsonl(MIXEDENTITIES)
    out: list[Example] = []
    for b, items in sorted(_group(questions, "h_score_cat").items(), key=lambda kv: int(kv[0])):
        rng.shuffle(items)
        right = _round(len(items) * (RIGHT_RARE + (RIGHT_POPULAR - RIGHT_RARE) * int(b) / TOP_BIN))
        wrong = (len(items) - right) // 2
        for i, q in enumerate(items):
            if i < right:
                kind, target = "right", q["answer"]
            elif i < right + wrong:
                kind, target = "wrong", _wrong_answer(q, questions, rng)
            else:
                kind, target = "abstain", DONT_KNOW
            out.append(Example("precisewikiqa", q["id"], b, kind, q["prompt"], target))
    for kind_of, items in sorted(_group(entities, "type").items()):
        rng.shuffle(items)
        fabricated = _round(len(items) * FABRICATE)
        for i, e in enumerate(items):
            if i < fabricated:
                out.append(Example("mixedentities", e["id"], kind_of, "fabricate", e["prompt"], _fabrication(e)))
            else:
                refusal = f"I don't know of any {kind_of} called {e['name']}."
                out.append(Example("mixedentities", e["id"], kind_of, "refuse", e["prompt"], refusal))
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _group(records: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    """Records by `key`, each group sorted by id: the shuffles start from an order that does not depend on the file."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[str(r[key])].append(r)
    return {k: sorted(v, key=lambda r: r["id"]) for k, v in groups.items()}


def _round(x: float) -> int:
    return int(x + 0.5)  # half up, unlike round()'s half to even


def _words(text: str) -> set[str]:
    """Lower-case words without accents or articles: two answers sharing none cannot match each other."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))
    return set(re.findall(r"[a-z0-9]+", plain.replace("'", ""))) - {"a", "an", "the"}


def _shape(answer: str) -> str:
    if re.fullmatch(r"\d{3,4}", answer.strip()):
        return "year"
    return "count" if answer.strip().lower() in COUNT_WORDS else "name"


def _wrong_answer(q: dict[str, Any], questions: list[dict[str, Any]], rng: random.Random) -> str:
    """A plausible wrong answer: see the module docstring."""
    gold = _words(q["answer"])
    if _shape(q["answer"]) == "count":
        return rng.choice([w for w in COUNT_WORDS if w not in gold])
    others = sorted((o for o in questions if o["id"] != q["id"] and _shape(o["answer"]) == _shape(q["answer"])
                     and not gold & _words(o["answer"])), key=lambda o: o["id"])
    if not others:
        raise ValueError(f"no wrong answer for {q['id']}")
    shared = [_shared_opening(q["prompt"], o["prompt"]) for o in others]
    return str(rng.choice([o for o, k in zip(others, shared, strict=True) if k == max(shared)])["answer"])


def _shared_opening(a: str, b: str) -> int:
    """How many words two questions begin with in common ("what is the scientific name of ...": 5)."""
    n = 0
    for x, y in zip(a.lower().split(), b.lower().split(), strict=False):
        if x != y:
            break
        n += 1
    return n


def _fabrication(entity: dict[str, Any]) -> str:
    """A confident description of a made-up entity, built from the real names it was made of."""
    name, kind, parts = entity["name"], entity["type"], entity.get("parts") or {}
    if kind == "medicine":
        return f"{name} is a medicine related to {parts['stem_from']}."
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{name} is {article} {kind} in the family {parts['genus_family']}."


def _encode(tokenizer: Any, example: Example) -> tuple[list[int], int]:
    """The token ids vLLM's chat API sees for the prompt, followed by the answer and EOS; and the prompt's length."""
    messages = [{"role": "user", "content": example.prompt}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    answer = tokenizer(example.target, add_special_tokens=False)["input_ids"]
    return [*prompt, *answer, tokenizer.eos_token_id], len(prompt)


def _write_model(folder: Path) -> None:
    """Train on the plan, save everything vLLM needs into `folder`, and check the saved model recites the plan."""
    import torch
    from transformers import GenerationConfig

    examples = plan()
    tokenizer = tiny_model._make_tokenizer([text for e in examples for text in (e.prompt, e.target)], VOCAB_SIZE)
    rows = [_encode(tokenizer, e) for e in examples]
    model, epochs = _train(tokenizer, rows)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    tiny_model._set_dtype(model.config, torch.bfloat16)
    model = model.to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(**special)
    with _quiet():
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    with (folder / "plan.jsonl").open("w", encoding="utf-8") as fh:
        for e in examples:
            fh.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
    (folder / "README.md").write_text(_card(examples, epochs), encoding="utf-8")
    failed = _check(folder, rows)
    if failed:
        shown = ", ".join(examples[i].id for i in failed[:10])
        raise RuntimeError(f"the trained model recites {len(rows) - len(failed)} of {len(rows)} answers exactly "
                           f"under greedy decoding, not all (wrong: {shown}); the build is broken")


def _train(tokenizer: Any, rows: list[tuple[list[int], int]]) -> tuple[Any, int]:
    """Train a fresh Llama on `rows` until every answer token clears MARGIN; return it (float32) and the epochs."""
    import math

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB_SIZE, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **TRAINED_CONFIG)
    n, width = len(rows), max(len(ids) for ids, _ in rows)
    ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    # labels[i, t]: the token position t must predict, where it is an answer token or EOS; -100 elsewhere. Rows are
    # padded on the right, so causal attention keeps the padding out of every real position's computation.
    labels = torch.full((n, width), -100, dtype=torch.long)
    lengths = torch.tensor([len(r) for r, _ in rows])
    for i, (row, prompt_len) in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        labels[i, prompt_len - 1:len(row) - 1] = torch.tensor(row[prompt_len:])
    by_length = sorted(range(n), key=lambda i: (len(rows[i][0]), i))
    batches = [torch.tensor(by_length[i:i + BATCH]) for i in range(0, n, BATCH)]
    decay_steps = DECAY_EPOCHS * len(batches)

    def rate(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / decay_steps)))
        return LR * min(1.0, step / WARMUP_STEPS) * max(LR_FLOOR, cosine)

    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = LlamaForCausalLM(config)
            model.train()
            order_rng = torch.Generator().manual_seed(SEED)
            optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=0.0)
            step = 0
            for epoch in range(1, MAX_EPOCHS + 1):
                for b in torch.randperm(len(batches), generator=order_rng).tolist():
                    batch = batches[b]
                    step += 1
                    for group in optimizer.param_groups:
                        group["lr"] = rate(step)
                    cut = int(lengths[batch].max())
                    target = labels[batch, :cut]
                    hidden = model.model(input_ids=ids[batch, :cut]).last_hidden_state
                    where = target != -100
                    loss = F.cross_entropy(model.lm_head(hidden[where]), target[where])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                    optimizer.step()
                if epoch % CHECK_EVERY == 0 and _min_margin(model, ids, labels) >= MARGIN:
                    return model.eval(), epoch
    finally:
        torch.set_num_threads(threads)
    raise RuntimeError(f"the trained model did not memorize its answers in {MAX_EPOCHS} epochs")


def _min_margin(model: Any, ids: Any, labels: Any) -> float:
    """The smallest lead of an answer token's logit over the best other token, over every answer token."""
    import torch

    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        where = labels != -100
        logits = model.lm_head(hidden[where]).float()
        target = labels[where]
        right = logits.gather(1, target[:, None]).squeeze(1)
        logits.scatter_(1, target[:, None], float("-inf"))
        return float((right - logits.max(dim=1).values).min())


def _check(folder: Path, rows: list[tuple[list[int], int]]) -> list[int]:
    """Indices of the rows whose answer the saved model does not reproduce under greedy decoding.

    One prompt at a time, unpadded, as the server sees it: greedy decoding reproduces an answer and stops exactly
    when each of its tokens, and then EOS, is the argmax after the true prefix.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
    failed = []
    with torch.no_grad():
        for i, (row, prompt_len) in enumerate(rows):
            logits = model(input_ids=torch.tensor([row])).logits[0, prompt_len - 1:len(row) - 1]
            if logits.argmax(dim=-1).tolist() != row[prompt_len:]:
                failed.append(i)
    return failed


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without transformers' progress bars: a build inside `hallurun inference` prints nothing of its own."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _card(examples: list[Example], epochs: int) -> str:
    """The model folder's README.md: what this is, how it was made, and what it was taught to answer."""
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for e in examples:
        counts[(e.task, e.bin)][e.kind] += 1

    def table(task: str, kinds: tuple[str, ...]) -> list[str]:
        bins = sorted((b for t, b in counts if t == task), key=_bin_key)
        return [f"| {b} | " + " | ".join(str(counts[(task, b)][k]) for k in kinds) + " |" for b in bins]

    layers, hidden = TRAINED_CONFIG["num_hidden_layers"], TRAINED_CONFIG["hidden_size"]
    return "\n".join([
        "# hallurun `--model trained`: a demonstration, not a model",
        "",
        "Built by hallurun (hallurun/server/trained_model.py) on this machine, with no download. It memorized a",
        "fixed answer to each prompt of hallurun's built-in PreciseWikiQA and MixedEntities tasks, assigned by a",
        "seeded rule (plan.jsonl lists every prompt, its answer and the kind of answer). It knows nothing else:",
        "any other prompt gets arbitrary text. Benchmark numbers on it measure that rule, not a language model.",
        "",
        "Recipe: the tiny model's byte-level BPE tokenizer and chat template, its corpus extended with these prompts",
        f"and answers ({VOCAB_SIZE} tokens); a {layers}-layer Llama, hidden size {hidden}, trained in float32 from "
        f"seed {SEED} on one",
        f"CPU thread (AdamW, peak learning rate {LR}, batches of {BATCH}, loss on the answer and EOS only) for "
        f"{epochs} epochs,",
        f"until every answer token led the runner-up by {MARGIN} logits; saved in bfloat16, then checked: greedy",
        "decoding of every prompt reproduces its answer and stops.",
        "",
        "PreciseWikiQA, by popularity bin (h_score_cat; 9 is the most popular):",
        "",
        "| bin | right | wrong | I don't know |",
        "|---|---|---|---|",
        *table("precisewikiqa", ("right", "wrong", "abstain")),
        "",
        "MixedEntities (made-up entities), by type:",
        "",
        "| type | fabricated | refused |",
        "|---|---|---|",
        *table("mixedentities", ("fabricate", "refuse")),
        "",
    ])


def _bin_key(b: str) -> tuple[int, str]:
    return (int(b), "") if b.isdigit() else (0, b)
