#!/usr/bin/env bash
# Build the FerretDB binary from its released Go module source.
# A plain `go install ...@vX` binary panics at start: FerretDB reads its version from
# build/version/version.txt, which the module archive does not ship. So we copy the module
# source, write that file, and build the server from it.
set -euo pipefail
version="${1:?usage: build-ferretdb.sh VERSION OUTPUT}"
output="${2:?usage: build-ferretdb.sh VERSION OUTPUT}"
src_dir="$(go mod download -json "github.com/FerretDB/FerretDB@${version}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
cp -r "$src_dir/." "$work/"
chmod -R u+w "$work"
echo "$version" > "$work/build/version/version.txt"
(cd "$work" && GOFLAGS=-mod=mod go build -trimpath -o "$(realpath -m "$OLDPWD/$output")" ./cmd/ferretdb)
