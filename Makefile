# Two commands on a fresh machine: `make demo` (install + end-to-end demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo-out

.PHONY: install demo test browser benchmark clean

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

test: install browser
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The review page's browser test needs Debian's chromium and its driver: installed when missing and we are
# root with apt; otherwise that test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			{ apt-get update -q && apt-get install -y --no-install-recommends chromium chromium-driver; } \
				|| echo "note: installing chromium failed: the browser test will skip"; \
		else echo "note: chromium / chromium-driver missing and not root with apt: the browser test will skip"; fi; \
	fi

benchmark: install
	$(BIN)/python benchmarks/prepare_benchmark.py

clean:
	rm -rf $(DEMO)
