#!/usr/bin/env bash
# Install the Debian packages the local cluster runs on, if any is missing (apt-get update
# once, then apt-get install). Installing them starts nothing: the cluster launcher runs its
# own containerd instance: a policy-rc.d that forbids starting services is in place during the
# install (Debian's containerd package would otherwise start the system's own), and removed
# after if this script put it there. (Prometheus is built from its Go module instead:
# Debian's prometheus 2.42 package is compiled without Kubernetes service discovery.)
# nftables: the launcher reads and restores the host's nft tables (a fresh machine has no nft).
# apache2-utils: htpasswd, which writes the project registry's logins as bcrypt (registry.py).
set -euo pipefail
# shellcheck source=lib/as-root.sh
source "$(dirname "$0")/lib/as-root.sh"
packages=(containerd runc containernetworking-plugins iptables nftables openssl iproute2 git
  apache2-utils)
missing=()
for package in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "cluster packages: all installed (${packages[*]})"
    exit 0
fi
echo "cluster packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# put here by install-cluster-packages.sh: start no service\nexit 101\n' |
        as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    trap 'as_root rm -f "$policy"' EXIT
fi
as_root apt-get update -q
as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
