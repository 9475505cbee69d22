# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build kept on this machine kind; unpinned it pulls several GB of CUDA.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv serve test clean

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

# Side by side against the in-process limit and infinity-emb (not part of `make test`): prints a
# Markdown table and writes bench/results.md; installs the peer into bench/.peer-venv on first use.
.PHONY: bench
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
