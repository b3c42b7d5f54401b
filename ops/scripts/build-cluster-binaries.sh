#!/usr/bin/env bash
# Build the local cluster's binaries (ops/cluster/binaries.tsv) from the Go module proxy, once
# per version, into a cache outside the clone so that another clone or CI reuses them:
#   ${PR_ANOMALY_CACHE:-$HOME/.cache/pr-anomaly}/cluster/bin/<name>-<version>
# A binary already in the cache is not rebuilt. Each build's wall time is appended to
# build-times.tsv beside the binaries. Builds run at the lowest CPU priority (nice 19).
# Go's build cache for these builds is a throw-away directory beside the binaries, removed
# when the script ends (it reached 13 GB after all of them, and nothing needs it once they are
# built); the binaries of one invocation still share it. KEEP_GOCACHE=1 keeps Go's own cache.
# A wrapper module with an executable prepare.sh is built from a copy of it that prepare.sh
# has prepared (its comment says why), in the same throw-away directory.
# Usage: build-cluster-binaries.sh [NAME...]   (no name: all of them)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
table="$here/cluster/binaries.tsv"
bin_dir="${PR_ANOMALY_CACHE:-$HOME/.cache/pr-anomaly}/cluster/bin"
mkdir -p "$bin_dir"
scratch="$(mktemp -d "$bin_dir/../scratch.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
if [[ "${KEEP_GOCACHE:-0}" != 1 ]]; then
    export GOCACHE="$scratch/gocache"
fi

ldflags_for() { # name version how -> -s -w and the -X flags that make the binary report its release
    local name="$1" version="$2" how="$3" flags="-s -w" pkg minor
    case "$how" in
    kubernetes)
        minor="${version#v1.}"
        minor="${minor%%.*}"
        for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
            flags+=" -X $pkg.gitTreeState=clean"
        done
        ;;
    argo-rollouts) pkg=github.com/argoproj/argo-rollouts/utils/version ;;
    argo-cd) pkg=github.com/argoproj/argo-cd/v3/common ;;
    alertmanager | prometheus-operator) # both report their release as Prometheus' tools do
        flags+=" -X github.com/prometheus/common/version.Version=${version#v}"
        ;;
    prometheus) # module v0.3XY.Z is Prometheus 3.XY.Z
        minor="${version#v0.3}"
        flags+=" -X github.com/prometheus/common/version.Version=3.$((10#${minor%%.*})).${version##*.}"
        ;;
    esac
    case "$how" in
    argo-rollouts | argo-cd) flags+=" -X $pkg.version=${version#v} -X $pkg.gitTreeState=clean" ;;
    esac
    echo "$flags"
}

build_one() { # name version how package runs
    local name="$1" version="$2" how="$3" package="$4" runs="$5" cgo
    cgo="$(go env CGO_ENABLED)"
    [[ "$runs" == static ]] && cgo=0
    local out="$bin_dir/$name-$version"
    if [[ -x "$out" ]]; then
        echo "cluster binary $name $version: cached ($out)"
        return
    fi
    local tmp="$out.tmp.$$" started ended ldflags
    ldflags="$(ldflags_for "$name" "$version" "$how")"
    echo "cluster binary $name $version: building from $package ($how) ..."
    started=$(date +%s)
    if [[ "$how" == install ]]; then
        local gobin
        gobin="$(mktemp -d)"
        CGO_ENABLED="$cgo" GOBIN="$gobin" nice -n 19 go install -trimpath -ldflags "$ldflags" "$package@$version"
        local built
        built="$(basename "$package")"
        # go install names the binary after the path without a major-version suffix (…/v5)
        [[ "$built" =~ ^v[0-9]+$ ]] && built="$(basename "$(dirname "$package")")"
        mv "$gobin/$built" "$tmp"
        rmdir "$gobin"
    else
        local module="$here/cluster/go/$how"
        if [[ -x "$module/prepare.sh" ]]; then
            local copy="$scratch/$how"
            rm -rf "$copy"
            mkdir -p "$copy"
            cp "$module"/go.mod "$module"/go.sum "$module"/*.go "$copy"/
            "$module/prepare.sh" "$copy"
            module="$copy"
        fi
        (cd "$module" && CGO_ENABLED="$cgo" nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp" "$package")
    fi
    mv "$tmp" "$out"
    ended=$(date +%s)
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$version" "$((ended - started))" "$(stat -c %s "$out")" \
        "$(date -u +%FT%TZ)" >>"$bin_dir/build-times.tsv"
    echo "cluster binary $name $version: built in $((ended - started)) s, $(du -h "$out" | cut -f1)"
}

found=0
while IFS=$'\t' read -r name version how package runs; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    if [[ $# -gt 0 ]]; then
        wanted=0
        for arg in "$@"; do [[ "$arg" == "$name" ]] && wanted=1; done
        [[ $wanted == 1 ]] || continue
    fi
    found=$((found + 1))
    build_one "$name" "$version" "$how" "$package" "$runs"
done <"$table"
if [[ $# -gt 0 && $found -ne $# ]]; then
    echo "build-cluster-binaries.sh: unknown name among: $* (see $table)" >&2
    exit 2
fi
