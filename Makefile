# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build kept on this machine kind; unpinned it pulls several GB of CUDA.
TORCH_SPEC ?= torch==2.13.0
# The one source of versions (docker/lock_requirements.py); `make lock` alone writes it.
LOCK := requirements.lock
PIP_INSTALL := $(BIN)/pip install -q --disable-pip-version-check
# Python writes bytecode here whatever the shell says: with PYTHONDONTWRITEBYTECODE set, every pytest run, xdist worker
# and test-started serve recompiles the project and pytest rewrites every test module again (collecting the fast tier
# took 20 s instead of 9 s here, `make test-fast` 165 s instead of 142 s).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv lock nginx serve test test-fast container-test lint-docker clean

venv: $(VENV)/.installed

# The project with the lock as constraints: a fresh machine gets the versions the tests passed with.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -c $(LOCK) '$(TORCH_SPEC)' -e '.[test]'
	touch $@

# Re-resolve the lock (keeps current pins that still fit pyproject.toml; UPGRADE=1 takes the newest).
# Runs on the bare $(PYTHON), so a lock that no longer fits pyproject.toml can still be rewritten.
lock:
	$(PYTHON) docker/lock_requirements.py --torch '$(TORCH_SPEC)' $(if $(UPGRADE),--upgrade)

# serve runs nginx in front of gunicorn (container/proxy.py); installed from the distribution when missing.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing nginx (apt-get)"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null; \
	  else echo "serve needs nginx: install it (sudo apt-get install nginx, brew install nginx)" >&2; exit 1; fi; }

serve: venv nginx
	$(BIN)/serve

# Every tier but soak (tests/conftest.py): unit, app (the real model in-process) and server (real processes, builds).
test: venv nginx
	$(BIN)/python -m pytest -m "not soak"
	$(MAKE) --no-print-directory container-test

# The inner loop: the unit and app tiers, no server started, on every core (pytest-xdist; a test file stays on one
# worker, so the models its module-scoped fixtures load are loaded once).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not server and not soak" -n auto --dist loadfile

# Builds the real image with podman and runs it with no network, as SageMaker and Azure ML do
# (docker/container_test.sh; installs podman, runc and debootstrap when missing, which needs root).
container-test: venv
	PYTHON=$(BIN)/python ./docker/container_test.sh

lint-docker: venv
	$(BIN)/hadolint Dockerfile

# Side by side against the in-process limits and infinity-emb (not part of `make test`): prints Markdown
# tables and writes bench/results.md (torch, then the ONNX backend); installs the peer into bench/.peer-venv.
.PHONY: bench soak
bench: venv nginx
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.onnx_bench
	$(BIN)/python -m bench.sparse
	$(BIN)/python -m bench.bge_m3
	$(BIN)/python -m bench.generative_rerank
	$(BIN)/python -m bench.listwise_rerank
	$(BIN)/python -m bench.decoder_embed
	$(BIN)/python -m bench.classify

# searchbox against the in-process limit on the same GPU, bf16 by default (bench/gpu.py; not part of `make test`, needs
# a CUDA device and torch's CUDA build; ~7 minutes): writes bench/gpu_results.md. `BENCH_GPU_ARGS="--dtype fp16"`.
.PHONY: bench-gpu
bench-gpu: venv nginx
	$(BIN)/python -m bench.gpu $(BENCH_GPU_ARGS)

# The soak tier's tests (timing, resident memory, load), then hostile and heavy traffic against a real serve, as a
# table (bench/soak.py; under 15 minutes).
soak: venv nginx
	$(BIN)/python -m pytest -m soak
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# What one instance sustains at a p95 target, per backend and request shape, against a real serve (bench/capacity.py,
# ~5 minutes): merged into bench/capacity.json, which packaging/deployment.py sizes endpoints from. Run it on the
# instance type you deploy to, named: `make capacity INSTANCE_TYPE=ml.c6i.xlarge`.
.PHONY: capacity scale
capacity: venv nginx
	$(BIN)/python -m bench.capacity $(if $(INSTANCE_TYPE),--instance-type $(INSTANCE_TYPE)) $(CAPACITY_ARGS)

# Autoscaling replayed on paper from bench/capacity.json: steady, ramp and spike traffic (bench/scale.py; seconds).
scale: venv
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

# Mutation testing of the core modules against the fast-tier tests that reach them (docker/mutation.py, mutmut 3
# configured in pyproject.toml): a Markdown table of kill rates and the mutants left alive.
# One module: `make mutation MUTATION_ARGS="--module model_handlers/metering.py"`; only those left alive: add --alive.
.PHONY: mutation
mutation: venv
	$(BIN)/python docker/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache mutants
