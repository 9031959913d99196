# fedrun developer commands. `make install` then `make test` is all a fresh machine needs.
PY ?= python3

.PHONY: install run test test-full lint clean bench gpu-wheels reproduce-paper reproduce-paper-quick

install:  ## install fedrun (editable) with its test tools
	$(PY) -m pip install -e ".[dev]"

run:  ## the default experiment (synthetic data, offline)
	fedrun

test:  ## the test suite without slow tests, on two processes (pytest-xdist, from the dev extra)
	$(PY) -m pytest -q -m "not slow" -n 2

test-full:  ## every test, slow ones included
	$(PY) -m pytest -q

lint:  ## byte-compile everything, check the stage layers (import-linter, pyproject.toml) and that the configs compose
	$(PY) -m compileall -q fedrun scripts tests
	lint-imports
	$(PY) -m pytest -q tests/test_config.py tests/test_layers.py

bench:  ## time both engines: make bench ARGS="model=logreg num_clients=100 participation=0.1 out=bench.json"
	$(PY) scripts/bench.py $(ARGS)

gpu-wheels:  ## wheels of fedrun's pure-Python needs, for a GPU machine without internet (scripts/gpu_check.sh installs them)
	$(PY) -m pip wheel --no-deps -w .whl hydra-core "omegaconf>=2.3,<2.4" antlr4-python3-runtime==4.9.3  # hydra-core 1.3 needs omegaconf < 2.4

reproduce-paper:  ## the paper's full grid (GPU job; finished runs skipped on a re-run) + report into outputs/paper/: make reproduce-paper ARGS="hydra/launcher=joblib_gpu"
	scripts/reproduce_paper.sh $(ARGS)

reproduce-paper-quick:  ## reduced grid (synthetic + Shakespeare texts, few rounds) in minutes on a CPU, report into outputs/paper-quick/ (plays downloaded once; SHAKESPEARE=dir reads them from dir)
	PY=$(PY) scripts/reproduce_paper_quick.sh $(ARGS)

clean:  ## remove run outputs and caches
	rm -rf outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
