# The two commands a new user runs: `make demo` and `make test`. Both set up .venv on their own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The floors job: hallurun with every direct dependency at exactly its declared floor, without vLLM.
FLOORS_VENV := .venv-floors
FLOORS      := constraints/floors.txt
# The CUDA vLLM where an NVIDIA GPU answers, otherwise its CPU build.
ENGINE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo vllm || echo cpu)

.PHONY: install demo demo-mock test test-fast test-floors lint eval bench bench-quick chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev,$(ENGINE)]'
ifeq ($(ENGINE),cpu)
	@# The index's torchvision breaks importing transformers beside the CPU torch; text models do not need it.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
endif
	touch $@

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" ./examples/demo.sh

demo-mock: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" ./examples/demo-mock.sh

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not vllm"

# ruff, and the import layering of pyproject.toml's [tool.importlinter] (lint-imports, from import-linter).
lint: $(STAMP)
	$(BIN)/ruff check hallurun tests bench constraints
	$(BIN)/lint-imports

# The floors job: the test files that exercise the direct dependencies' APIs (aiohttp's client and server, and
# tenacity's retries of 429s and 500s, in test_client and test_inference; click and rich in test_inference;
# matplotlib in test_eval and test_timeline; PyYAML in test_examples; orjson and pytest everywhere), and the
# decision logic that needs none, without vLLM, on the floors of constraints/floors.txt in a venv of its own,
# made anew each time. Fails if pip cannot resolve the floors or installs anything else for a direct dependency.
# The other files (wedge and retry timing, processes, signals, pools, shards, sweeps, chaos: hallurun's own
# logic over the same calls) run in `make test`; CI has 30 minutes for both (test_recovery alone took 139 s).
FLOORS_TESTS := tests/test_client.py tests/test_inference.py tests/test_eval.py tests/test_examples.py \
	tests/test_timeline.py tests/test_metrics.py tests/test_decisions.py tests/test_window.py \
	tests/test_checkpoint.py tests/test_supervisor_unit.py tests/test_gpus.py tests/test_tasks.py
test-floors:
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install -q -e '.[dev]' -c $(FLOORS)
	$(FLOORS_VENV)/bin/python constraints/check_floors.py
	$(FLOORS_VENV)/bin/python -m pytest -m "not vllm and not torch" $(FLOORS_TESTS)

# Evaluate a run (RUN=runs/x; default: the latest under runs/) with the heuristic judge, or JUDGE=<model>.
eval: $(STAMP)
	$(BIN)/hallurun eval $(RUN) $(if $(JUDGE),--judge $(JUDGE))

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

# Many more chaos schedules than `make test` runs (SEEDS=N from START=M), two at a time, with a summary.
chaos: $(STAMP)
	$(BIN)/python tests/chaos_run.py --seeds $(or $(SEEDS),200) --start $(or $(START),0) --jobs 2

clean:
	rm -rf $(VENV) $(FLOORS_VENV) runs .pytest_cache .ruff_cache .import_linter_cache
