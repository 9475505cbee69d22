#!/bin/sh
# The image's ENTRYPOINT. `serve` (what SageMaker passes) and no argument at all (Azure ML custom
# containers run the image's own command and append nothing; the default CMD is `serve`) start the
# server; any other command runs as given, e.g. `IMAGE python -c ...` or `IMAGE bash`.
# Everything ends in `exec`, so the server is PID 1 and receives `docker stop`'s SIGTERM itself:
# gunicorn's master then finishes in-flight requests (20 s grace, under SageMaker's 30 s) and exits.
set -eu

# CUDA forward compatibility. Newer NVIDIA container toolkits no longer mount the image's
# /usr/local/cuda/compat libraries, and SageMaker GPU hosts may run a driver older than the CUDA
# this image was built for (470 by default). When the host's kernel driver is older than the
# compat libcuda the image carries, put the compat libraries first so CUDA initialises; when it is
# as new or newer, the host's own libcuda must win. No GPU, or no compat libraries: nothing to do.
# The two paths are variables only so that a test can point them at fixtures.
cuda_compat() {
    version_file=${SEARCHBOX_NVIDIA_VERSION_FILE:-/proc/driver/nvidia/version}
    compat_dir=${SEARCHBOX_CUDA_COMPAT_DIR:-/usr/local/cuda/compat}
    [ -r "$version_file" ] || return 0
    compat_lib=
    for candidate in "$compat_dir"/libcuda.so.*.*; do
        [ -e "$candidate" ] && compat_lib=$candidate && break
    done
    [ -n "$compat_lib" ] || return 0
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ..." -> 535.104.05
    host_version=$(grep -Eo '[0-9]+\.[0-9]+(\.[0-9]+)?' "$version_file" | head -n 1 || true)
    image_version=${compat_lib##*/libcuda.so.}
    [ -n "$host_version" ] || return 0
    oldest=$(printf '%s\n%s\n' "$host_version" "$image_version" | sort -V | head -n 1)
    if [ "$host_version" != "$image_version" ] && [ "$oldest" = "$host_version" ]; then
        echo "entrypoint: host driver $host_version is older than the image's CUDA driver $image_version:" \
            "using the forward-compatibility libraries in $compat_dir" >&2
        LD_LIBRARY_PATH="$compat_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export LD_LIBRARY_PATH
    fi
}

cuda_compat

if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
    # `serve` ignores further arguments, as SageMaker's contract allows
    exec serve
fi
exec "$@"
