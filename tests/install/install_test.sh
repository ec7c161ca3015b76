#!/bin/sh
# Installs the build tree into a temporary prefix, then builds and runs
# engine.c against the installed tree twice: through find_package(kqsvd) and
# through pkg-config. Usage: install_test.sh BUILD_DIR SOURCE_DIR C_COMPILER
# [EXTRA_CFLAGS] (sanitizer builds pass their -fsanitize flags here, since an
# instrumented libkqsvd needs an instrumented program).
set -eu
build=$1
src=$2
cc=$3
extra=${4:-}
work=$(mktemp -d "${TMPDIR:-/tmp}/kqsvd-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

cmake --install "$build" --prefix "$prefix" > "$work/install.log"
test -f "$prefix/include/kqsvd.h"
test -f "$prefix/include/kqsvd_backend.h"
# The installed CLI runs and finds its library.
"$prefix/bin/kqsvd" devices > "$work/devices.txt"
# Every backend module built next to libkqsvd is installed next to it too.
lib=$(dirname "$(find "$prefix" -name 'libkqsvd.so' | head -n 1)")
for module in "$build"/lib/libkqsvd-*.so; do
  [ -e "$module" ] || continue
  test -f "$lib/$(basename "$module")" || { echo "not installed: $module"; exit 1; }
done

# The installed library exports exactly what the installed headers declare.
if command -v python3 > /dev/null && command -v nm > /dev/null; then
  python3 "$src/tests/install/check_exports.py" "$lib/libkqsvd.so" "$prefix/include/kqsvd.h" \
    "$prefix/include/kqsvd_backend.h" "$prefix/include/kqsvd_vulkan.h" "$prefix/include/kqsvd_opencl.h"
fi

# 1. CMake package.
cmake -S "$src/tests/install/consumer" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="$extra" -DCMAKE_EXE_LINKER_FLAGS="$extra" \
  -DENGINE_SOURCE="$src/tests/install/engine.c" > "$work/cmake.log"
cmake --build "$work/cmake-build" > "$work/build.log"
"$work/cmake-build/engine"

# 2. pkg-config (the .pc file is relocatable: no prefix baked in).
pc_dir=$(dirname "$(find "$prefix" -name kqsvd.pc | head -n 1)")
export PKG_CONFIG_PATH="$pc_dir"
libdir=$(pkg-config --variable=libdir kqsvd)
# shellcheck disable=SC2046,SC2086
"$cc" $extra -std=c11 -Wall -Wextra -Werror -o "$work/engine-pc" "$src/tests/install/engine.c" \
  $(pkg-config --cflags --libs kqsvd) -lm -Wl,-rpath,"$libdir"
"$work/engine-pc"
echo "install test: OK ($prefix)"
