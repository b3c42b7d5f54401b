#!/usr/bin/env bash
# Install the Debian packages the local cluster runs on, if any is missing (apt-get update
# once, then apt-get install). Installing them starts nothing: the cluster launcher runs its
# own containerd instance.
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables openssl iproute2)
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
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
