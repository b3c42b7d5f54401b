#!/usr/bin/env bash
# Promote staging to production: main gets exactly the image digests built, tested and pinned
# on staging (build once). `make promote` and the promote workflow run it.
#
#   ops/scripts/promote.sh           GitHub: open or update the pull request staging -> main
#                                    (gh; GH_TOKEN or `gh auth login`; GH_REPO or the clone's remote)
#   ops/scripts/promote.sh REMOTE    a plain git remote (or PROMOTE_REMOTE=REMOTE), such as the
#                                    local cluster's git://198.19.0.1:9418/pr-anomaly.git: do what
#                                    merging that pull request does, a merge commit of staging
#                                    into main, pushed; nothing is rebuilt
#
# Either way it prints the images: block that main gets. The local promotion pushes only when
# main's images: list then equals staging's (compare-digests.sh), and names the image if not.
# Environment: PROMOTE_WORKDIR (a scratch clone to reuse; default: a temporary one).
set -euo pipefail
scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/kustomization-images.sh
source "$scripts/lib/kustomization-images.sh"

SOURCE=staging TARGET=main
TITLE="Promote $SOURCE to production"
fail() { echo "promote: $*" >&2; exit 1; }
[ $# -le 1 ] || { echo "usage: $0 [REMOTE]" >&2; exit 2; }
remote=${1:-${PROMOTE_REMOTE:-}}

print_images() {
  echo "the images: list $TARGET gets ($KUSTOMIZATION):"
  images_block
}

# GitHub: the pull request, so main's checks and reviews gate production. Opened with a token
# that starts workflow runs (the promote workflow: a GitHub App's), never with GITHUB_TOKEN.
promote_on_github() {
  command -v gh >/dev/null || fail "gh (GitHub CLI) is needed to open the pull request; or pass a plain git remote"
  local kustomization body existing
  kustomization="$(gh api -H "Accept: application/vnd.github.raw+json" \
    "repos/{owner}/{repo}/contents/$KUSTOMIZATION?ref=$SOURCE")" \
    || fail "cannot read $KUSTOMIZATION of branch $SOURCE on GitHub"
  body="$(printf 'Promote %s to production: the same image digests, no rebuild.\n\n```\n%s\n```\n' \
    "$SOURCE" "$(images_block <<< "$kustomization")")"
  existing="$(gh pr list --base "$TARGET" --head "$SOURCE" --state open --json number --jq '.[0].number // empty')"
  if [ -n "$existing" ]; then
    gh pr edit "$existing" --body "$body" >/dev/null
    echo "updated pull request #$existing: $(gh pr view "$existing" --json url --jq .url)"
  else
    gh pr create --base "$TARGET" --head "$SOURCE" --title "$TITLE" --body "$body"
  fi
  print_images <<< "$kustomization"
}

# A plain git remote: the merge that GitHub's "Create a merge commit" would make.
promote_on_git_remote() {
  local shown_remote staging outcome
  shown_remote="$(redacted_url "$remote")"
  workdir=${PROMOTE_WORKDIR:-} # global: the EXIT trap removes it
  if [ -z "$workdir" ]; then
    workdir="$(mktemp -d)"
    trap 'rm -rf "$workdir"' EXIT
  fi
  [ -d "$workdir/.git" ] || git init --quiet "$workdir"
  cd "$workdir"
  ensure_git_identity promote
  staging="origin/$SOURCE"
  git fetch --quiet "$remote" "+refs/heads/$SOURCE:refs/remotes/$staging" \
    || fail "cannot fetch branch $SOURCE from $shown_remote"
  if ! git ls-remote --exit-code --quiet "$remote" "refs/heads/$TARGET" >/dev/null; then
    git checkout --quiet --force -B "$TARGET" "$staging"
    outcome="created $TARGET from $SOURCE"
  else
    git fetch --quiet "$remote" "+refs/heads/$TARGET:refs/remotes/origin/$TARGET" \
      || fail "cannot fetch branch $TARGET from $shown_remote"
    git checkout --quiet --force -B "$TARGET" "refs/remotes/origin/$TARGET"
    if git merge-base --is-ancestor "$staging" HEAD; then
      outcome=""
      echo "$TARGET already contains $SOURCE ($(git rev-parse --short "$staging")): nothing to merge"
    else
      git merge --quiet --no-ff --no-edit -m "$TITLE (merge $SOURCE into $TARGET)" "$staging" \
        || { git merge --abort || true; fail "$SOURCE does not merge cleanly into $TARGET: resolve it on $SOURCE first"; }
      outcome="merged $SOURCE into $TARGET"
    fi
  fi
  # What production will run must be what staging runs, image by image, and the same model.
  "$scripts/compare-digests.sh" "$TARGET" "$staging" >/dev/null \
    || fail "$TARGET does not pin $SOURCE's images (above)${outcome:+: not pushed}"
  # A rollback by revert on main stays on main through later merges (git does not merge a
  # reverted change again): bring it into staging first (merge main into staging).
  git diff --quiet "$staging" HEAD -- "$MODEL_PIN" \
    || fail "$TARGET would serve $(model_line HEAD), $SOURCE serves $(model_line "$staging") (a rollback on $TARGET that $SOURCE lacks?): merge $TARGET into $SOURCE, pin the model you want there, then promote${outcome:+; not pushed}"
  if [ -n "$outcome" ]; then
    git push --quiet "$remote" "HEAD:refs/heads/$TARGET" \
      || fail "cannot push $TARGET to $shown_remote (did it move meanwhile? run again)"
    echo "$outcome on $shown_remote ($(git rev-parse --short HEAD)), no image rebuilt"
  fi
  git show "HEAD:$KUSTOMIZATION" | print_images
}

case $remote in
  "") promote_on_github ;;
  *github.com[:/]*) fail "a GitHub repository is promoted by pull request: run without a remote" ;;
  *) promote_on_git_remote ;;
esac
