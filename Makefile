.PHONY: help setup test lint bench example
PY ?= .venv/bin/python

help:  ## list targets
	@grep -E '^[a-z]+:.*##' Makefile | sed 's/:.*##/\t/'

setup:  ## create .venv with torch (CPU) and the project in editable mode
	./scripts/setup.sh

test:  ## run the test suite (needs PostgreSQL on 127.0.0.1:5432)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2

lint:  ## ruff
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

example:  ## the quick start: train a tiny LoRA, push it, pull it, load it with PEFT
	./examples/quickstart.sh

bench:  ## every benchmark, one after another (hours on 2 cores; see bench/README.md)
	$(PY) -m pip install -q -e ".[bench]"
	mkdir -p bench/out
	$(PY) bench/speed/llama7b.py --json bench/out/speed.json
	$(PY) -m bench.service.lookup
	$(PY) -m bench.service.pull
	$(PY) -m bench.service.concurrency
	$(PY) bench/fidelity/data.py
	$(PY) bench/fidelity/train.py
	$(PY) bench/fidelity/run.py
