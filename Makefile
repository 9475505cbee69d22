# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build kept on this machine kind; unpinned it pulls several GB of CUDA.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv serve test container-test lint-docker clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

serve: venv
	$(BIN)/serve

test: venv
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory container-test

# Builds the real image with podman and runs it with no network, as SageMaker and Azure ML do
# (docker/container_test.sh; installs podman, runc and debootstrap when missing, which needs root).
container-test: venv
	PYTHON=$(BIN)/python ./docker/container_test.sh

lint-docker: venv
	$(BIN)/hadolint Dockerfile

# Side by side against the in-process limit and infinity-emb (not part of `make test`): prints a
# Markdown table and writes bench/results.md; installs the peer into bench/.peer-venv on first use.
.PHONY: bench
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
