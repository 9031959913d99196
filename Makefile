# fedrun developer commands. `make install` then `make test` is all a fresh machine needs.
PY ?= python3

.PHONY: install run test test-full lint clean bench

install:  ## install fedrun (editable) with its test tools
	$(PY) -m pip install -e ".[dev]"

run:  ## the default experiment (synthetic data, offline)
	fedrun

test:  ## the test suite without slow tests
	$(PY) -m pytest -q -m "not slow"

test-full:  ## every test, slow ones included
	$(PY) -m pytest -q

lint:  ## byte-compile everything and check the configs compose
	$(PY) -m compileall -q fedrun scripts tests
	$(PY) -m pytest -q tests/test_config.py

bench:  ## time both engines: make bench ARGS="model=logreg num_clients=100 participation=0.1 out=bench.json"
	$(PY) scripts/bench.py $(ARGS)

clean:  ## remove run outputs and caches
	rm -rf outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
