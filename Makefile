# nthexp: the README's commands.
#
#   make run     # the main job: 100-point NTK sweep on digits (experiment=quickstart)
#   make test    # the fast test suite (not slow, not gpu)
#
# Every target that runs Python first builds .venv from the pinned requirements
# (requirements/lock.txt), then reuses it until lock.txt or pyproject.toml changes.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.stamp
PY := $(VENV)/bin/python

# Extra Hydra overrides for `make run`, e.g. make run ARGS="experiment=late_time".
ARGS ?=
# Extra pytest arguments, e.g. make test PYTEST_ARGS="tests/test_kernels.py -x".
PYTEST_ARGS ?=
# Wall-clock limit for one test session (CI gives the whole job 90 minutes).
TEST_TIMEOUT ?= 75m

.PHONY: help venv .venv run test test-slow test-all bench bench-peers docs lint lock slurm-up slurm-down \
	clean distclean

help:
	@echo "make run        the main job: nthexp -m experiment=quickstart \$$(ARGS)"
	@echo "                (wandb offline unless WANDB_MODE is set)"
	@echo "make test       fast tests (not slow, not gpu); PYTEST_ARGS=... to narrow"
	@echo "make test-slow  the slow tests only (full grids, large Monte Carlo)"
	@echo "make test-all   all tests, slow ones included"
	@echo "make bench      benchmarks (python -m benchmarks.run)"
	@echo "make bench-peers  nthexp vs neural-tangents (builds .venv-peers; not in CI)"
	@echo "make docs       check the links of README.md and docs/*.md"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make lock       recompile requirements/lock.txt from requirements/base.in"
	@echo "make slurm-up   start the local single-node SLURM cluster (slurm-down stops it)"
	@echo "make venv       build $(VENV) only"
	@echo "make clean      remove caches and build files (keeps $(VENV) and multirun/)"
	@echo "make distclean  clean, and remove $(VENV) too"

# --- environment -----------------------------------------------------------------

venv .venv: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		2>/dev/null || { \
		echo "error: nthexp needs Python >= 3.11 with the venv module;" \
			"'$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo 'not found')." >&2; \
		echo "Install a newer Python or point make at one: make PYTHON=python3.12 ..." >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# --- the main job ----------------------------------------------------------------

# The quickstart preset, unless ARGS names another experiment (Hydra would let the last
# one win anyway; leaving it out keeps the recorded command clean).
EXPERIMENT := $(if $(filter experiment=%,$(ARGS)),,experiment=quickstart)

run: $(STAMP)
	WANDB_MODE="$${WANDB_MODE:-offline}" $(VENV)/bin/nthexp -m $(EXPERIMENT) $(ARGS)

# --- tests -----------------------------------------------------------------------

# Serial on purpose: JAX already uses every core for one test, so workers only compete.
# pytest's exit code 5 ("no tests collected") is turned into a failure, so that a
# broken collection can never pass CI. --foreground lets Ctrl-C reach pytest.
define run_pytest
	@rc=0; timeout --foreground --kill-after=1m $(TEST_TIMEOUT) $(PY) -m pytest -m "$(1)" -q $(PYTEST_ARGS) || rc=$$?; \
	case $$rc in \
		0) ;; \
		5) echo "make: pytest collected no tests (exit code 5); failing." >&2; rc=1 ;; \
		124) echo "make: tests ran past TEST_TIMEOUT=$(TEST_TIMEOUT); failing." >&2 ;; \
	esac; \
	exit $$rc
endef

test: $(STAMP)
	$(call run_pytest,not slow and not gpu)

test-slow: $(STAMP)
	$(call run_pytest,slow and not gpu)

test-all: $(STAMP)
	$(call run_pytest,not gpu)

# --- other tools -----------------------------------------------------------------

bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

# Optional, never in CI: neural-tangents (the peer) in its own venv on its old JAX,
# timed in alternation with nthexp. requirements/peers.txt pins the peer's stack.
PEERS_VENV ?= .venv-peers
$(PEERS_VENV)/.stamp: requirements/peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet -r requirements/peers.txt
	$(PEERS_VENV)/bin/pip install --quiet --no-deps neural-tangents==0.6.5
	@touch $@

bench-peers: $(STAMP) $(PEERS_VENV)/.stamp
	$(PY) -m benchmarks.peers --python $(PEERS_VENV)/bin/python $(ARGS)

# The docs are plain Markdown; this only checks that relative links point at files.
docs:
	@echo "Docs are Markdown, nothing to build: README.md, then docs/index.md."
	@status=0; \
	for f in README.md docs/*.md; do \
		[ -e "$$f" ] || continue; \
		for link in $$(grep -oE '\]\([^)#[:space:]]+' "$$f" | sed 's/^](//'); do \
			case $$link in *://*|mailto:*) continue ;; esac; \
			[ -e "$$(dirname "$$f")/$$link" ] \
				|| { echo "$$f: broken link: $$link" >&2; status=1; }; \
		done; \
	done; \
	[ $$status -eq 0 ] && echo "All relative links resolve."; \
	exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Recompile the pins; see requirements/README.md. uv goes into the venv if missing.
lock: $(STAMP)
	@[ -x $(VENV)/bin/uv ] || $(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile requirements/base.in --python-version 3.11 \
		--no-emit-index-url --no-emit-find-links -o requirements/lock.txt

slurm-up:
	bash launch/slurm-up.sh

slurm-down:
	bash launch/slurm-down.sh

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
