#!/usr/bin/env bash
# Push a built image under its registry name and print what was pushed, by digest:
#   push-image.sh SOURCE REGISTRY/REPOSITORY:TAG   ->   REGISTRY/REPOSITORY@sha256:...
# The digest is the one this push reports (docker push's "digest: sha256:..." line): the
# manifest the registry now serves under the tag. `docker inspect`'s RepoDigests may list an
# older push of the same image first, so it is never used. Log in to the registry first.
# The stage workflows' push step and the local cluster's push (pipeline_ops.cluster.registry)
# both run this script. DOCKER names the client (default: docker on PATH).
set -euo pipefail
if [[ $# -ne 2 || $2 != */*:* ]]; then
  echo "usage: $0 SOURCE REGISTRY/REPOSITORY:TAG" >&2
  exit 2
fi
source_image=$1 target=$2
docker=${DOCKER:-docker}
"$docker" tag "$source_image" "$target"
trap '"$docker" image rm "$target" >/dev/null 2>&1 || true' EXIT  # the tag only
output=$("$docker" push "$target")
printf '%s\n' "$output" >&2
digest=$(printf '%s\n' "$output" | sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' | tail -n 1)
if [[ -z $digest ]]; then
  echo "push-image: docker push $target printed no digest" >&2
  exit 1
fi
echo "${target%:*}@${digest}"
