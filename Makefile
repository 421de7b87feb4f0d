# Two commands on a fresh machine: `make demo` (install + end-to-end demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo-out

.PHONY: install demo test benchmark clean

$(BIN)/changeflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build from the local wheel where there is one; a range would pull CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/changeflow

demo: install
	$(BIN)/changeflow synthetic --out $(DEMO)/scenes --size 1536
	$(BIN)/changeflow run --config configs/demo.yaml --out $(DEMO)/run

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

benchmark: install
	$(BIN)/python benchmarks/prepare_benchmark.py

clean:
	rm -rf $(DEMO)
