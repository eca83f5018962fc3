# Two entry points: `make demo` and `make test`. Both create and reuse .venv and install everything into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean browser sandbox

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# CPU machines take the CPU build of torch first, so no multi-GB CUDA wheel is pulled in.
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q "torch>=2.4"; \
	else \
		$(BIN)/python -m pip install -q torch==2.13.0 || \
		$(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]" -c constraints.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/d1 demo

# The trace viewer's test runs in a real headless Chromium: installed here when missing and we are root.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the trace viewer's browser test"; \
		{ apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
			echo "could not install chromium: the browser test will fail and say so"; \
	else \
		echo "chromium not found and not root: the browser test will be skipped (apt-get install chromium)"; \
	fi

# Model-written code runs in bubblewrap (d1.sandbox): installed here when missing and we are root.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing bubblewrap (apt-get) for the code sandbox's tests"; \
		{ apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || \
			echo "could not install bubblewrap: the sandbox tests will fail and say so"; \
	else \
		echo "bubblewrap not found and not root: the sandbox tests will be skipped (apt-get install bubblewrap)"; \
	fi

test: $(STAMP) browser sandbox
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
