#!/usr/bin/env bash
# Alertmanager embeds its web UI (`//go:embed app/dist` in ui/web.go), which its release process
# builds with npm and its Go module does not carry: neither `go install` nor a plain wrapper
# builds it ("pattern app/dist: no matching files found"). build-cluster-binaries.sh calls this
# with a copy of this wrapper module ($1); here its go.mod is pointed at a copy of the
# module's own source (from the Go module cache) holding a one-page placeholder for the UI.
# Every Go file is the release's: the API (/api/v2), routing and notifications are unchanged.
set -euo pipefail
work="$1"
module=github.com/prometheus/alertmanager
cd "$work"
go mod download "$module"
source_dir="$(go list -m -f '{{.Dir}}' "$module")"
cp -r "$source_dir" alertmanager-source
chmod -R u+w alertmanager-source # the module cache is read-only
for app in elm mantine; do
    mkdir -p "alertmanager-source/ui/app/dist/$app"
    printf '%s\n' '<!doctype html><title>Alertmanager</title>' \
        '<p>Built without its web UI (its Go module does not carry it): the API is at' \
        '<a href="api/v2/status">api/v2</a>.' >"alertmanager-source/ui/app/dist/$app/index.html"
done
go mod edit -replace "$module=./alertmanager-source"
