# shellcheck shell=bash
# Sourced by pin-image-digest.sh, promote.sh and compare-digests.sh: the one `images:` list of
# argo-apps/base/kustomization.yaml, read the way `kustomize edit set image` writes it.

KUSTOMIZATION=argo-apps/base/kustomization.yaml
# the model model-serving serves: one line, SERVING_MODEL_URI=models:/NAME/VERSION
MODEL_PIN=argo-apps/base/model-serving-model.env

# The model a commit pins (its MODEL_PIN's value).
model_line() {
  git show "$1:$MODEL_PIN" | sed -n 's/^SERVING_MODEL_URI=//p'
}
# the model model-serving serves (one line, SERVING_MODEL_URI=models:/NAME/VERSION)
MODEL_PIN=argo-apps/base/model-serving-model.env

# The top-level `images:` block of a kustomization on stdin, as written.
images_block() {
  awk '/^images:/ { inside = 1; print; next }
       inside && /^[^[:space:]#-]/ { inside = 0 }
       inside'
}

# One line per image of a kustomization on stdin, sorted: NAME REFERENCE, where REFERENCE is
# what the manifests end up with (newName or name, then :newTag, then @digest).
image_references() {
  images_block | awk '
    function flush() {
      if (name != "")
        print name, (new_name != "" ? new_name : name) (tag != "" ? ":" tag : "") (digest != "" ? "@" digest : "")
      name = new_name = tag = digest = ""
    }
    /^images:/ || /^[[:space:]]*(#|$)/ { next }
    /^[[:space:]]*- / { flush(); sub(/^[[:space:]]*- /, "") }
    {
      key = $1; sub(/:$/, "", key)
      value = $2; gsub(/["\047]/, "", value)
      if (key == "name") name = value
      else if (key == "newName") new_name = value
      else if (key == "newTag") tag = value
      else if (key == "digest") digest = value
    }
    END { flush() }' | sort
}

# A URL as it may be printed: without any user or password part.
redacted_url() {
  printf '%s\n' "$1" | sed -E 's#^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@#\1#'
}

# A git identity for the commits these scripts make, unless the caller's git has one
# (GIT_AUTHOR_*/GIT_COMMITTER_* in the environment win over it anyway).
ensure_git_identity() {
  git config user.email >/dev/null || git config user.email "$1@localhost"
  git config user.name >/dev/null || git config user.name "$1"
}
