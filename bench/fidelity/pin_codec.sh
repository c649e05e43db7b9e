#!/bin/sh
# Measure one commit's codec, whatever the working tree holds:
#   export PYTHONPATH=$(bench/fidelity/pin_codec.sh HEAD)
# checks out compress/ of that commit under bench/out/codec-<sha>/ and prints a folder whose
# `adapters` package resolves `adapters.compress` there (ahead of the editable install).
set -eu
sha=$(git rev-parse --short "${1:-HEAD}")
root=$(git rev-parse --show-toplevel)/bench/out/codec-$sha
if [ ! -d "$root/adapters/compress" ]; then
    mkdir -p "$root/adapters"
    git archive "$sha" compress | tar -x -C "$root/adapters"
    echo '"""adapters, with compress/ pinned to one commit (bench/fidelity/pin_codec.sh)."""' > "$root/adapters/__init__.py"
fi
echo "$root"
