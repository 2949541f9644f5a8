#!/usr/bin/env bash
# Builds the server image (Dockerfile) with buildah, without a Docker daemon or network access at build time:
#   1. a Debian bookworm base (Python 3.11, like the lock's wheels) made by mmdebstrap; its tarball is cached
#      in $CACHE/rootfs-<hash of mmdebstrap's arguments>.tar, so only the first build makes it (delete it to
#      take newer Debian packages);
#   2. a wheelhouse filled here by pip from requirements.lock, in $CACHE/wheels/<torch index>;
#   3. `buildah build` of the Dockerfile on that base, with the wheelhouse as the build context `wheels`.
# $CACHE is ${XDG_CACHE_HOME:-~/.cache}/jpegweights. Storage: the vfs driver (it works everywhere, and builds
# commit one layer, so each copy costs once).
#
#   deploy/image/build.sh [TAG]          build TAG (default jpegweights:latest)
#   deploy/image/build.sh --wheelhouse   only fill the wheelhouse and print its path (for docker buildx)
#
# Environment: PYTHON, the interpreter whose pip fills the wheelhouse (default .venv/bin/python);
# TORCH_INDEX, an index for torch and torchvision at the lock's versions (e.g. the CPU-only builds of
# https://download.pytorch.org/whl/cpu; default: the lock's, PyPI's CUDA build); BUILDAH_ROOT, a storage
# root of its own (default: buildah's); DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${XDG_CACHE_HOME:-$HOME/.cache}/jpegweights
py=${PYTHON:-.venv/bin/python}
buildah=(buildah --storage-driver vfs)
[ -z "${BUILDAH_ROOT:-}" ] || buildah+=(--root "$BUILDAH_ROOT/root" --runroot "$BUILDAH_ROOT/run")

# Fills the wheelhouse for the lock (or TORCH_INDEX's torch) and prints its path. pip copies files already
# there from it (--find-links), so a second run downloads nothing.
wheelhouse() {
    local variant=lock
    [ -z "${TORCH_INDEX:-}" ] || variant=$(printf %s "$TORCH_INDEX" | sha256sum | cut -c1-16)
    local dir=$cache/wheels/$variant
    local pip=("$py" -m pip download --quiet --disable-pip-version-check --no-input --dest "$dir" --find-links "$dir")
    mkdir -p "$dir"
    if [ -n "${TORCH_INDEX:-}" ]; then
        # torch==X+cpu is newer than torch==X for pip, so the lock's pins then pick these builds.
        "${pip[@]}" --no-deps --index-url "$TORCH_INDEX" $(grep -E '^(torch|torchvision)==' requirements.lock)
    fi
    "${pip[@]}" --constraint requirements.lock '.[serve,models,onnx]' 2> >(grep -v '^WARNING: Location' >&2)
    "${pip[@]}" --no-deps --requirement requirements-models.lock 2> >(grep -v '^WARNING: Location' >&2)
    echo "$dir"
}

# Makes (once) the Debian base image from mmdebstrap's tarball and prints its name.
base_image() {
    local args=(--variant=minbase --include=python3,python3-venv,ca-certificates
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
        bookworm)
    local key
    key=$(printf '%s\n' "${args[@]}" "${DEBIAN_MIRROR:-}" | sha256sum | cut -c1-16)
    local rootfs=$cache/rootfs-$key.tar name=localhost/jpegweights-base:$key
    if [ ! -f "$rootfs" ]; then
        mkdir -p "$cache"
        mmdebstrap --quiet "${args[@]}" "$rootfs.part.tar" ${DEBIAN_MIRROR:-} >&2
        mv "$rootfs.part.tar" "$rootfs"
    fi
    if ! "${buildah[@]}" inspect --type image "$name" >/dev/null 2>&1; then
        local ctr
        ctr=$("${buildah[@]}" from scratch)
        "${buildah[@]}" add "$ctr" "$rootfs" / >/dev/null
        "${buildah[@]}" commit --quiet --rm "$ctr" "$name" >/dev/null
    fi
    echo "$name"
}

if [ "${1:-}" = --wheelhouse ]; then
    wheelhouse
    exit
fi
wheels=$(wheelhouse)
base=$(base_image)
# --format docker keeps the HEALTHCHECK (OCI image configs have none).
"${buildah[@]}" build --isolation chroot --format docker --layers=false \
    --build-arg BASE="$base" --build-context wheels="$wheels" --tag "${1:-jpegweights:latest}" .
