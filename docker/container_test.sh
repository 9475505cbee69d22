#!/usr/bin/env bash
# Builds the real image with podman and runs it the way SageMaker and Azure ML do, with no network:
#   1. podman, runc and debootstrap (installed with apt-get when missing; needs root)
#   2. a base image: $SEARCHBOX_TEST_BASE, else the Dockerfile's default when it can be pulled, else
#      localhost/debian-base:bookworm made once with debootstrap (no registry needed)
#   3. `podman build`, pip reaching its index exactly as the host's pip does (its config is
#      turned into a build secret, local index directories are mounted read-only; nothing of it
#      lands in a layer or in this repository)
#   4. SageMaker: `--network none`, the model mounted at /opt/ml/model, `IMAGE serve`; /ping,
#      an embedding, a rerank and bad requests on /invocations; then `podman stop`, timed
#   5. Azure ML custom container: the model at $AZUREML_MODEL_DIR, no arguments, /score
#   6. a self-contained image: the model baked in with --build-arg MODEL_DIR, nothing mounted; then the same image
#      as Vertex AI runs it (its AIP_* port and routes, the image's own command), and with AIP_STORAGE_URI and no
#      network: a one-line start-up refusal (the copy itself is tested against an emulator: tests/test_vertex.py);
#      and `pip check`: one lock serves azmlinfsrv and google-cloud-storage together
#   7. the slim image (--target slim): an ONNX int8 artifact built here, served with no torch in the image
# Prints the image size, the build time, the time from `podman run` to the first /ping 200 and
# the stop time. Everything it starts it removes; the image stays, so a rerun builds from cache.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${SEARCHBOX_TEST_IMAGE:-localhost/searchbox:container-test}
LOCAL_BASE=localhost/debian-base:bookworm
PYTHON=${PYTHON:-.venv/bin/python}
# podman here: crun fails on this host's hybrid cgroups, and root cannot raise rlimits
PODMAN_RUNTIME=(--runtime runc)
ULIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

say() { printf 'container-test: %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

workdir=$(mktemp -d)
baked_model=build/container-test-model  # MODEL_DIR must lie inside the build context
containers=()
cleanup() {
    for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
    rm -rf "$workdir" "$baked_model"
}
trap cleanup EXIT

# ---- 1. tools ----------------------------------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        say "needs ${missing[*]}: run as root or install them (apt-get install ${missing[*]})" >&2
        exit 1
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- 2. base image ------------------------------------------------------------------------------
default_base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile | head -n 1)
if [ -n "${SEARCHBOX_TEST_BASE:-}" ]; then
    base=$SEARCHBOX_TEST_BASE
elif podman image exists "$default_base" || timeout 60 podman pull -q "$default_base" >/dev/null 2>&1; then
    base=$default_base
else
    base=$LOCAL_BASE
    if ! podman image exists "$LOCAL_BASE"; then
        say "no registry reachable: making $LOCAL_BASE with debootstrap"
        start=$(now)
        rootfs="$workdir/rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" >"$workdir/debootstrap.log" 2>&1 \
            || { tail -n 20 "$workdir/debootstrap.log" >&2; exit 1; }
        # what debootstrap leaves behind (downloaded .debs, package lists) is no part of a base image
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
        tar --numeric-owner -C "$rootfs" -c . | podman import -q - "$LOCAL_BASE" >/dev/null
        rm -rf "$rootfs"
        say "base image made in $(since "$start") s"
    fi
fi
say "base image: $base"

# ---- 3. build -----------------------------------------------------------------------------------
# The host's pip settings (`pip config list`: index, extra indexes, find-links, constraint files, CA bundle)
# become a pip.conf passed as a build secret; every local path they name is mounted read-only under
# /run/host-pip for the build only (docker/pip_build_config.py). Nothing of it lands in a layer or in this repository.
"$PYTHON" docker/pip_build_config.py "$workdir/pip.conf" "$workdir/pip-volumes"
build_args=(--build-arg "BASE_IMAGE=$base" --secret "id=pipconf,src=$workdir/pip.conf")
for cert in "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$cert" ] && [ -f "$cert" ]; then build_args+=(--secret "id=pipcert,src=$cert"); break; fi
done
while read -r mount; do build_args+=(-v "$mount:ro"); done <"$workdir/pip-volumes"

# build TAG [podman build options]: builds, drops the tag's previous image (not anyone else's)
build() {
    local tag=$1 old_id new_id
    shift
    old_id=$(podman image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    if ! podman build "${PODMAN_RUNTIME[@]}" "${ULIMITS[@]}" "${build_args[@]}" "$@" -t "$tag" . \
        >"$workdir/build.log" 2>&1; then
        tail -n 40 "$workdir/build.log" >&2
        say "FAILED: podman build $*" >&2
        exit 1
    fi
    new_id=$(podman image inspect -f '{{.Id}}' "$tag")
    if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
}

say "building $IMAGE"
start=$(now)
build "$IMAGE"
build_s=$(since "$start")
cached=$(grep -c -- '--> Using cache' "$workdir/build.log" || true)
size_mb=$(podman image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f", $1 / 1e6 }')
say "built in $build_s s ($cached cached steps), image size $size_mb MB"

# ---- 4. SageMaker: IMAGE serve, model at /opt/ml/model, no network ---------------------------------
model=$("$PYTHON" -c 'from container.settings import embedded_model_dir; print(embedded_model_dir())')
cp -r "$model" "$workdir/model"
run_flags=("${PODMAN_RUNTIME[@]}" "${ULIMITS[@]}" --network none -d)

sm=searchbox-sagemaker-$$
containers+=("$sm")
start=$(now)
podman run "${run_flags[@]}" --name "$sm" -v "$workdir/model:/opt/ml/model:ro" "$IMAGE" serve >/dev/null
checks() { podman exec -i "$1" python - "$2" <docker/container_checks.py; }
# logs_say CONTAINER TEXT: the server's log names TEXT (read whole: `grep -q` on a pipe would
# SIGPIPE `podman logs` and fail the pipeline under pipefail)
logs_say() {
    local logs
    logs=$(podman logs "$1" 2>&1)
    grep -qF -- "$2" <<<"$logs" || { tail -n 20 <<<"$logs" >&2; return 1; }
}
if ! checks "$sm" ping; then podman logs "$sm" 2>&1 | tail -n 30 >&2; exit 1; fi
ping_s=$(since "$start")
say "SageMaker: first /ping 200 after $ping_s s"
if ! checks "$sm" sagemaker; then podman logs "$sm" 2>&1 | tail -n 30 >&2; exit 1; fi
logs_say "$sm" "model: /opt/ml/model (SageMaker model artifact)" \
    || { say "FAILED: the server did not serve /opt/ml/model" >&2; exit 1; }

# SageMaker sends SIGTERM and kills 30 s later: stop must be quick and clean, not a kill
start=$(now)
podman stop -t 30 "$sm" >/dev/null
stop_s=$(since "$start")
exit_code=$(podman inspect -f '{{.State.ExitCode}}' "$sm")
if [ "$exit_code" != 0 ]; then
    podman logs "$sm" 2>&1 | tail -n 20 >&2
    say "FAILED: the server exited with $exit_code on SIGTERM (137 = killed)" >&2
    exit 1
fi
say "SageMaker: stopped in $stop_s s, exit code 0"

# ---- 5. Azure ML custom container: model at $AZUREML_MODEL_DIR, the image's own command ------------
az=searchbox-azure-$$
containers+=("$az")
azure_dir=/var/azureml-app/azureml-models/minilm/1
podman run "${run_flags[@]}" --name "$az" -e "AZUREML_MODEL_DIR=$azure_dir" \
    -v "$workdir/model:$azure_dir/model:ro" "$IMAGE" >/dev/null
if ! checks "$az" azure; then podman logs "$az" 2>&1 | tail -n 30 >&2; exit 1; fi
logs_say "$az" "model: $azure_dir/model (\$AZUREML_MODEL_DIR)" \
    || { say "FAILED: the server did not serve the model in \$AZUREML_MODEL_DIR" >&2; exit 1; }
start=$(now)
podman stop -t 30 "$az" >/dev/null
say "Azure ML: /score answered; stopped in $(since "$start") s, exit code $(podman inspect -f '{{.State.ExitCode}}' "$az")"

# ---- 6. the model baked into the image, nothing mounted ---------------------------------------------
rm -rf "$baked_model" && mkdir -p build && cp -r "$workdir/model" "$baked_model"
start=$(now)
build "$IMAGE-baked" --build-arg "MODEL_DIR=$baked_model"
say "image with the model baked in built in $(since "$start") s (every layer but the model's from cache)"
baked=searchbox-baked-$$
containers+=("$baked")
podman run "${run_flags[@]}" --name "$baked" "$IMAGE-baked" >/dev/null
if ! checks "$baked" azure; then podman logs "$baked" 2>&1 | tail -n 30 >&2; exit 1; fi
logs_say "$baked" "model: /opt/ml/model (SageMaker model artifact)" \
    || { say "FAILED: the server did not serve the baked-in /opt/ml/model" >&2; exit 1; }
podman stop -t 30 "$baked" >/dev/null
say "baked-in model: served from /opt/ml/model with nothing mounted"

vx=searchbox-vertex-$$
containers+=("$vx")
podman run "${run_flags[@]}" --name "$vx" -e AIP_HTTP_PORT=8081 \
    -e AIP_PREDICT_ROUTE=/v1/endpoints/1/deployedModels/2:predict -e AIP_HEALTH_ROUTE=/v1/endpoints/1/deployedModels/2 \
    "$IMAGE-baked" >/dev/null
if ! checks "$vx" vertex; then podman logs "$vx" 2>&1 | tail -n 30 >&2; exit 1; fi
podman stop -t 30 "$vx" >/dev/null
say "Vertex AI: AIP_HTTP_PORT, AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE answered"
set +e
refusal=$(timeout 180 podman run "${PODMAN_RUNTIME[@]}" "${ULIMITS[@]}" --network none --rm \
    -e AIP_STORAGE_URI=gs://searchbox-container-test/model "$IMAGE" 2>&1)
refused=$?
set -e
if [ "$refused" = 0 ] || [ "$refused" = 124 ] \
    || ! grep -qF "cannot serve gs://searchbox-container-test/model: cannot copy the model" <<<"$refusal"; then
    tail -n 20 <<<"$refusal" >&2
    say "FAILED: AIP_STORAGE_URI out of reach is not a clear start-up failure (exit $refused)" >&2; exit 1
fi
say "Vertex AI: an unreachable AIP_STORAGE_URI stops the start with exit $refused and one line"
podman run "${PODMAN_RUNTIME[@]}" "${ULIMITS[@]}" --network none --rm "$IMAGE" python -m pip check \
    || { say "FAILED: pip check (google-cloud-storage beside azmlinfsrv)" >&2; exit 1; }
say "pip check: google-cloud-storage beside azmlinfsrv in one image, no broken requirements"

# ---- 7. the slim image: an ONNX int8 artifact, no torch in the image ---------------------------------
start=$(now)
build "$IMAGE-slim" --target slim
slim_s=$(since "$start")
slim_mb=$(podman image inspect -f '{{.Size}}' "$IMAGE-slim" | awk '{ printf "%.0f", $1 / 1e6 }')
say "slim image built in $slim_s s, size $slim_mb MB"
onnx_artifact="$workdir/onnx/model.tar.gz"
"$PYTHON" packaging/build_artifact.py "$model" -o "$onnx_artifact" --backend onnx --quantize int8 >"$workdir/onnx.log" 2>&1 \
    || { tail -n 20 "$workdir/onnx.log" >&2; say "FAILED: building the ONNX artifact" >&2; exit 1; }
mkdir -p "$workdir/onnx/model" && tar -xzf "$onnx_artifact" -C "$workdir/onnx/model"
slim=searchbox-slim-$$
containers+=("$slim")
start=$(now)
podman run "${run_flags[@]}" --name "$slim" -v "$workdir/onnx/model:/opt/ml/model:ro" "$IMAGE-slim" serve >/dev/null
if ! checks "$slim" ping; then podman logs "$slim" 2>&1 | tail -n 30 >&2; exit 1; fi
slim_ping_s=$(since "$start")
if ! checks "$slim" sagemaker; then podman logs "$slim" 2>&1 | tail -n 30 >&2; exit 1; fi
if podman exec "$slim" python -c 'import torch' >/dev/null 2>&1; then
    say "FAILED: the slim image has torch" >&2; exit 1
fi
podman stop -t 30 "$slim" >/dev/null
say "slim image: ONNX int8 artifact served with no network and no torch; first /ping 200 after $slim_ping_s s"

# ---- any other command runs as given -------------------------------------------------------------
torch_version=$(podman run "${PODMAN_RUNTIME[@]}" "${ULIMITS[@]}" --network none --rm "$IMAGE" \
    python -c 'import torch; print(torch.__version__)')
say "other commands run as given (torch $torch_version in the image)"

say "PASSED: image $size_mb MB, build $build_s s, run to first /ping 200 $ping_s s, stop $stop_s s;" \
    "slim image $slim_mb MB, first /ping 200 $slim_ping_s s"
