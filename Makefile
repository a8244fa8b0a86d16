# Everything from a fresh Debian machine with Python 3.11+: `make serve` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the stack needs: the python stub embeds the system libpython; venv support.
# libb64-0d: perf_analyzer (make perf-analyzer) links it. prometheus and openssl: the tests run them.
APT_PACKAGES := libpython3.11 python3-venv libb64-0d prometheus openssl

.PHONY: help system-deps install serve test lint typecheck unit integration perf-analyzer clean

help:
	@echo "make serve  - build the default model and start Triton on 127.0.0.1 (Ctrl-C stops)"
	@echo "make test   - lint, type-check and run the whole test suite"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

# Installing builds the package, which generates the gRPC stubs from the proto (setup.py).
$(BIN)/.installed: pyproject.toml setup.py matteserve/api/proto/matteserve/v1/matteserve.proto
	$(MAKE) system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/matteserve serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/python tools/typecheck.py

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

test: lint typecheck perf-analyzer
	$(BIN)/pytest || [ $$? -eq 5 ]  # 5: no tests collected is not a failure

# Triton's perf_analyzer, from the tritonclient 2.51.0 wheel (pip download --no-deps, only the binary
# extracted: the project's newer tritonclient stays) plus its libcudart.so.12 in an isolated folder.
perf-analyzer: install
	$(BIN)/python -m matteserve.loadtest.perf_analyzer

clean:
	rm -rf $(VENV) .setuptools-build .mypy_tree .mypy_cache .pytest_cache .ruff_cache
