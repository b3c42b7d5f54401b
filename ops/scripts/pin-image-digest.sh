#!/usr/bin/env bash
# Pin one image by digest in argo-apps/base/kustomization.yaml on a branch of a git remote:
# one commit "deploy NAME sha256:... to BRANCH", pushed. The stage workflows' bump job
# (stage-image.yml) runs it against GitHub; the local cluster against its plain git server.
#
#   ops/scripts/pin-image-digest.sh NAME REPO@sha256:DIGEST REMOTE BRANCH
#   ops/scripts/pin-image-digest.sh model-serving registry.local/model-serving@sha256:... \
#       git://198.19.0.1:9418/pr-anomaly.git staging
#
# REMOTE is any URL git can fetch from and push to. Keep credentials out of it (a credential
# helper, as the workflow does); it is printed without them anyway.
# Every attempt starts from the branch's current tip and applies the pin again, so a push that
# lost a race to another image's pin is retried on top of it. A pin already in place: exit 0.
#
# Environment: KUSTOMIZE (default: the project's .tools/bin/kustomize, `make setup`),
# PIN_WORKDIR (a scratch clone to reuse; default: a temporary one, removed at exit),
# PIN_ATTEMPTS (default 5).
set -euo pipefail
project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=lib/kustomization-images.sh
source "$project_root/ops/scripts/lib/kustomization-images.sh"

fail() { echo "pin-image-digest: $*" >&2; exit 1; }
usage() { echo "pin-image-digest: $*" >&2; echo "usage: $0 NAME REPO@sha256:DIGEST REMOTE BRANCH" >&2; exit 2; }
[ $# -eq 4 ] || usage "four arguments expected, $# given"
name=$1 reference=$2 remote=$3 branch=$4
[[ $name =~ ^[a-z0-9][a-z0-9._-]*$ ]] || usage "'$name' is no image name"
[[ $reference =~ ^[^@[:space:]]+@sha256:[0-9a-f]{64}$ ]] \
  || usage "'$reference' is not REPOSITORY@sha256:<64 hex digits> (a pushed image's digest)"
[ -n "$branch" ] || usage "the branch is empty"
digest=${reference##*@}
shown_remote="$(redacted_url "$remote")"
attempts=${PIN_ATTEMPTS:-5}

kustomize=${KUSTOMIZE:-$project_root/.tools/bin/kustomize}
command -v "$kustomize" >/dev/null \
  || fail "kustomize not found at $kustomize: run \`make setup\` (or \`make .tools/bin/kustomize\`) or set KUSTOMIZE"
kustomize="$(command -v "$kustomize")"
case $kustomize in /*) ;; *) kustomize="$PWD/$kustomize" ;; esac

workdir=${PIN_WORKDIR:-}
if [ -z "$workdir" ]; then
  workdir="$(mktemp -d)"
  trap 'rm -rf "$workdir"' EXIT
fi
[ -d "$workdir/.git" ] || git init --quiet "$workdir"
cd "$workdir"
ensure_git_identity pin-image-digest

for attempt in $(seq 1 "$attempts"); do
  # Only the tip is needed: the pin is a function of it, and pushing from it works.
  git fetch --quiet --depth 1 "$remote" "refs/heads/$branch" \
    || fail "cannot fetch branch $branch from $shown_remote"
  base="$(git rev-parse FETCH_HEAD)"
  git checkout --quiet --force -B "$branch" "$base"
  grep -Eq "^[[:space:]-]*name: $name\$" <(images_block < "$KUSTOMIZATION") \
    || fail "$name is not in the images: list of $KUSTOMIZATION on $branch"
  (cd "$(dirname "$KUSTOMIZATION")" && "$kustomize" edit set image "$name=$reference")
  if git diff --quiet -- "$KUSTOMIZATION"; then
    echo "$name is already pinned to $digest on $branch: nothing to do"
    exit 0
  fi
  git commit --quiet -m "deploy $name $digest to $branch" -- "$KUSTOMIZATION"
  if git push --quiet "$remote" "HEAD:refs/heads/$branch"; then
    echo "pinned $name to $reference on $branch of $shown_remote ($(git rev-parse --short HEAD))"
    exit 0
  fi
  tip="$(git ls-remote "$remote" "refs/heads/$branch")" || fail "cannot read branch $branch of $shown_remote"
  tip=${tip%%[[:space:]]*}
  [ "$tip" != "$base" ] || fail "push to $branch of $shown_remote failed, and not because the branch moved"
  echo "push to $branch lost a race to ${tip:0:12} (attempt $attempt of $attempts): pinning again on top" >&2
  sleep "$attempt"
done
fail "could not push the pin of $name to $branch after $attempts attempts"
