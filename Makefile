# lstm-serve developer entry points. Every target sets up what it needs (.venv,
# generated code) and is idempotent. `make help` lists them.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two installs into the same .venv, each recorded by a stamp named after a hash of
# pyproject.toml and its extras: `serve` is the server and the client alone (no torch);
# `full` adds the `train` and `dev` extras (torch, pytest, ruff, mypy, grpcio-tools).
SERVE_EXTRAS :=
FULL_EXTRAS  := train,dev
stamp = $(VENV)/.installed-$(1)-$(shell { cat pyproject.toml requirements.lock; echo 'extras=$(2)'; } | sha1sum | cut -c1-12)
# The runtime dependencies install at the versions requirements.lock pins (what the image
# installs), as constraints without the hashes: the extras' own packages are not locked.
CONSTRAINTS := $(VENV)/constraints.txt
constraints = grep -E '^[a-z0-9].*==' requirements.lock | sed 's/ *\\$$//' > $(CONSTRAINTS)
SERVE_STAMP := $(call stamp,serve,$(SERVE_EXTRAS))
FULL_STAMP  := $(call stamp,full,$(FULL_EXTRAS))

.DEFAULT_GOAL := help
.PHONY: help setup serve test fuzz lock audit lint proto proto-check gpu-check train bench bench-oip bench-sessions bench-peer soak deploy-tools client-venvs deploy-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

# The lean install. A full install includes it, so it also writes this stamp.
$(SERVE_STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@$(constraints)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e .
	@rm -f $(VENV)/.installed-serve-* && touch $@

$(FULL_STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@$(constraints)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[$(FULL_EXTRAS)]'
	@rm -f $(VENV)/.installed-* && touch $@ $(SERVE_STAMP)

setup: $(FULL_STAMP) ## create .venv with the server, client, training and dev tools

serve: $(SERVE_STAMP) ## install the server and client into .venv (no torch); serve models/ on :50051 (metrics :9090)
	$(BIN)/lstm-serve --models models

proto: $(FULL_STAMP) ## regenerate the Python code for protos/
	PYTHON=$(BIN)/python scripts/gen_proto.sh

proto-check: proto ## fail when the committed generated code is stale
	@git diff --exit-code --stat -- protos/ || (echo "generated code in protos/ is stale: run 'make proto' and commit" && exit 1)

lint: $(FULL_STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

deploy-tools: ## install the manifest validators into .venv-deploy
	scripts/setup-deploy-tools.sh

client-venvs: ## install the Open Inference Protocol clients (tritonclient, kserve, perf_analyzer) into .venv-triton
	scripts/setup-client-venvs.sh

test: $(FULL_STAMP) deploy-tools client-venvs proto-check lint ## the whole test suite (what CI runs)
	$(BIN)/pytest

fuzz: $(FULL_STAMP) ## the decoder fuzzers with many examples (hypothesis profile `fuzz`, about 20,000 examples, ~2 min; `make test` runs `ci`)
	LSTM_SERVE_FUZZ_PROFILE=fuzz $(BIN)/pytest tests/fuzz --hypothesis-show-statistics $(FUZZ_ARGS)

lock: ## re-pin the runtime dependencies into requirements.lock (uv in .venv-audit; Python 3.11.11, linux x86_64, hashes)
	scripts/audit.sh lock

audit: ## pip-audit requirements.lock (.venv-audit); says so plainly when no advisory source answers
	scripts/audit.sh audit

gpu-check: $(FULL_STAMP) ## on a CUDA machine: CUDA/TensorRT chosen and outputs match the CPU
	$(BIN)/python scripts/gpu_check.py

train: $(FULL_STAMP) ## retrain every bundled model into models/ and remake demo/ (~20 min)
	for recipe in har har-gru vowels forecast kws; do $(BIN)/lstm-train $$recipe --out models || exit 1; done
	$(BIN)/lstm-train demo --model models/kws/1 --out demo

bench: BASE ?= HEAD~1
bench: $(FULL_STAMP) ## benchmark: in-process ORT, server batching off/on/--workers 2, this code vs BASE (default HEAD~1); writes docs/ (~10 min, then bench-oip and bench-sessions: ~14 min in all)
	$(BIN)/python scripts/bench.py --base '$(BASE)' $(BENCH_ARGS)
	$(MAKE) bench-oip bench-sessions

bench-sessions: $(FULL_STAMP) ## benchmark: resume-token seal/open and CPU per chunk, Redis store against memory (Predict p50/p99, write-back CPU, store ops); writes docs/benchmarks.md (~2 min)
	$(BIN)/python scripts/lstm_bench/sessions_bench.py

bench-oip: $(FULL_STAMP) client-venvs ## benchmark: Open Inference Protocol (v2) vs native CPU per chunk, and perf_analyzer; writes docs/benchmarks.md (~2 min)
	$(BIN)/python scripts/lstm_bench/oip.py

bench-peer: $(FULL_STAMP) ## benchmark: lstm-serve against MLServer (.venv-peer), the stateless peer, on the same model and load: sessions held, saturated frames/s, CPU per chunk; writes docs/benchmarks.md (~3 min)
	scripts/setup-peer-venv.sh
	$(BIN)/python scripts/lstm_bench/peer.py $(PEER_ARGS)

soak: $(FULL_STAMP) ## soak: capacity sweep, then 60 % of it on two replicas for 10 min (faults, a SIGTERM); writes docs/soak.md (~13 min)
	$(BIN)/python scripts/lstm_bench/soak.py $(SOAK_ARGS)

deploy-check: $(FULL_STAMP) deploy-tools ## validate deploy/ (kustomize, schemas, checkov, semantics)
	$(BIN)/pytest tests/deploy

clean: ## remove virtualenvs and caches
	rm -rf $(VENV) .venv-deploy .venv-triton .venv-audit .venv-peer .hypothesis .pytest_cache .mypy_cache .ruff_cache
