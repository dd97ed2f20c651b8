# strata: `make demo` runs the main job end to end offline; `make test` runs every check.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup lint typecheck imports unit bench clean

setup:
	@./scripts/setup.sh

demo: setup
	@./scripts/demo.sh

lint: setup
	$(BIN)/ruff check src tests bench

typecheck: setup
	$(BIN)/mypy

imports: setup
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/unpack.py

clean:
	rm -rf .demo .mypy_cache .ruff_cache .pytest_cache
