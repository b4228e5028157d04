# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
H2O   := $(VENV)/bin/h2ostack

.PHONY: setup model demo demo-down test unit lint bench clean

setup:
	bash scripts/setup.sh

models/tiny/config.json: | setup
	$(PY) -m h2ostack.tinymodel models/tiny

model: models/tiny/config.json

demo: setup model
	$(H2O) up stacks/demo.yaml
	$(H2O) check stacks/demo.yaml
	@echo
	@echo "The demo stack is up: '$(H2O) status demo' shows it, '$(H2O) logs demo -f' follows it,"
	@echo "and '$(H2O) down stacks/demo.yaml' (or 'make demo-down') stops it."

demo-down:
	$(H2O) down stacks/demo.yaml

lint: setup
	$(VENV)/bin/ruff check h2ostack tests bench

unit: setup
	$(PY) -m pytest tests/unit -q

# Everything the tests need is installed and started here: the project env, the CPU vLLM env,
# a private Docker engine (started by the test fixtures), the browser.
test: setup lint
	bash scripts/test.sh

bench: setup model
	$(PY) bench/up_parallel.py
	$(PY) bench/cli_startup.py

clean:
	rm -rf $(VENV) models/tiny
