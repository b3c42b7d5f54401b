#!/usr/bin/env bash
# Make room for the cluster tier on a CI runner: `make test` needs about 50 GB free (the
# engine's data root, the images, the cluster's state, the venv and Go's caches; README,
# "What a fresh machine needs"), and a GitHub-hosted runner starts with far less. Removes
# the toolchains and caches preinstalled there that the run never uses (each only if it
# exists), then checks that NEED_GB (default 50) are free under the workspace, or fails
# naming what is free. Run as root (the workflow runs it with sudo). On a machine of your
# own, free the space yourself: this script only removes the listed runner folders.
set -euo pipefail
need_gb="${1:-50}"
unused=(
    /usr/share/dotnet
    /usr/local/lib/android
    /opt/ghc
    /usr/local/.ghcup
    /opt/hostedtoolcache/CodeQL
    /usr/local/share/boost
    /usr/share/swift
    /usr/local/julia*
)
for folder in "${unused[@]}"; do
    if [[ -d "$folder" ]]; then
        echo "make-room: removing $folder"
        rm -rf "$folder"
    fi
done
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "make-room: removing the runner's preloaded Docker images"
    docker image prune --all --force >/dev/null
fi
where="${GITHUB_WORKSPACE:-$PWD}"
free_gb=$(( $(df --output=avail -k "$where" | tail -1) / 1024 / 1024 ))
if (( free_gb < need_gb )); then
    echo "make-room: only ${free_gb} GB free under ${where}, ${need_gb} GB needed" >&2
    exit 1
fi
echo "make-room: ${free_gb} GB free under ${where}"
