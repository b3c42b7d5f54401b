#!/usr/bin/env bash
# Whether two git revisions pin the same images: the images: lists of their
# argo-apps/base/kustomization.yaml, compared image by image (name, repository, tag, digest).
# promote.sh runs it on main and staging before it pushes main; CI on the promotion pull request.
#
#   ops/scripts/compare-digests.sh [-C REPOSITORY] REVISION_A REVISION_B
#   ops/scripts/compare-digests.sh main staging
#
# Exit 0 when they agree, 1 naming every image that differs, 2 on bad arguments.
set -euo pipefail
# shellcheck source=lib/kustomization-images.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/kustomization-images.sh"

usage() { echo "compare-digests: $*" >&2; echo "usage: $0 [-C REPOSITORY] REVISION_A REVISION_B" >&2; exit 2; }
git=(git)
if [ "${1:-}" = -C ]; then
  [ $# -ge 2 ] || usage "-C needs a repository"
  git=(git -C "$2")
  shift 2
fi
[ $# -eq 2 ] || usage "two revisions expected, $# given"
a=$1 b=$2

references() {
  local text
  text="$("${git[@]}" show "$1:$KUSTOMIZATION")" \
    || { echo "compare-digests: $1 has no $KUSTOMIZATION" >&2; exit 2; }
  image_references <<< "$text"
}
refs_a="$(references "$a")"
refs_b="$(references "$b")"

differ=0
while read -r name; do
  in_a="$(awk -v n="$name" '$1 == n { print $2 }' <<< "$refs_a")"
  in_b="$(awk -v n="$name" '$1 == n { print $2 }' <<< "$refs_b")"
  [ "$in_a" = "$in_b" ] && continue
  differ=1
  echo "compare-digests: image $name differs: $a has ${in_a:-no entry}, $b has ${in_b:-no entry}" >&2
done < <(cut -d' ' -f1 <<< "$refs_a"$'\n'"$refs_b" | sed '/^$/d' | sort -u)

if [ "$differ" = 1 ]; then
  echo "compare-digests: $a and $b do not pin the same images ($KUSTOMIZATION)" >&2
  exit 1
fi
echo "$a and $b pin the same $(grep -c . <<< "$refs_a") images"
