# shellcheck shell=bash
# Sourced by the scripts that install Debian packages: `as_root CMD...` runs CMD as root,
# through sudo when this user is not root (a GitHub-hosted runner's user, a laptop), and says
# what to do when neither works. Only package installs go through it: the engine and the
# cluster need root for the whole run, and `make` says so before it starts them.
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo DEBIAN_FRONTEND=noninteractive "$@"
    else
        echo "$1 needs root and sudo is not installed: run this as root" >&2
        return 2
    fi
}
