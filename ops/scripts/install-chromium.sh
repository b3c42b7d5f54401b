#!/usr/bin/env bash
# Install Debian's headless-capable Chromium if /usr/bin/chromium is missing (apt-get update
# once, then apt-get install): the run report's rendering test opens the HTML report in it.
set -euo pipefail
# shellcheck source=lib/as-root.sh
source "$(dirname "$0")/lib/as-root.sh"
if [[ -x /usr/bin/chromium ]]; then
    echo "chromium: installed ($(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium))"
    exit 0
fi
echo "chromium: installing Debian's chromium package"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -q
as_root apt-get install -y -q --no-install-recommends chromium
