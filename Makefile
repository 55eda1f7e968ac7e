# The README's two commands: `make demo` and `make test`. Each bootstraps itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Playwright's Python package drives Debian's Chromium (tests/browser); it never downloads one.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: test test-unit test-bluez test-browser screenshots demo lint typecheck bench clean deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

deps: $(STAMP)
	@./scripts/ensure-system-deps

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Everything, the BlueZ test bed (tests/bluez: a Debian VM under QEMU) included.
test: deps lint
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The BlueZ test bed alone (docs/ble-transport.md): a Debian VM under QEMU with bluetoothd.
test-bluez: deps
	$(BIN)/pytest -q -p no:cacheprovider tests/bluez

# The fast, pure part: no process, socket or pty (tests/unit/conftest.py enforces it).
test-unit: deps
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

# The console in Debian's Chromium (tests/browser; also part of `make test`).
test-browser: deps
	$(BIN)/pytest -q -p no:cacheprovider tests/browser

# The same browser tests, writing the README's console pictures into docs/img.
screenshots: deps
	SEALGW_SCREENSHOTS=docs/img $(BIN)/pytest -q -p no:cacheprovider tests/browser

demo: deps
	$(BIN)/sealgw demo --duration 60

bench: deps
	$(BIN)/python -m bench pipeline --json

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
