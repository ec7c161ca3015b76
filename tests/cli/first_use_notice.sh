#!/bin/sh
# The first run on a Vulkan or OpenCL device with an empty kernel cache says
# that it compiles kernels; a second run with the cache filled says nothing.
# usage: first_use_notice.sh KQSVD DEVICE
set -u
kqsvd=$1 device=$2
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
case_name=$("$kqsvd" conformance --list | head -n 1)
run() { KQSVD_CACHE_DIR="$dir" "$kqsvd" conformance --device "$device" --filter "^$case_name\$" 2>&1; }
first=$(run) || { echo "first run failed: $first"; exit 1; }
case "$first" in
  *"$device: first use: compiling its kernels"*) ;;
  *) echo "no first-use notice on an empty cache: $first"; exit 1 ;;
esac
second=$(run) || { echo "second run failed: $second"; exit 1; }
case "$second" in
  *"first use"*) echo "notice again with a filled cache: $second"; exit 1 ;;
esac
echo "ok: $device"
