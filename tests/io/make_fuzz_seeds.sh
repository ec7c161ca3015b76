#!/bin/sh
# Regenerates tests/fuzz/seeds_safetensors/ (the safetensors fuzzing seed
# corpus) from the malformed-file tables of the io tests:
#   tests/io/make_fuzz_seeds.sh BUILD_DIR
# BUILD_DIR must hold bin/test_safetensors and bin/test_projections.
set -eu
build=$1
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../fuzz/seeds_safetensors"
mkdir -p "$out"
rm -f "$out"/*.safetensors "$out"/*.kqproj
"$build/bin/test_safetensors" --write-seeds "$out"
"$build/bin/test_projections" --write-files "$out"
ls "$out" | wc -l
