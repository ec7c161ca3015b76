#!/bin/sh
# run_backend.sh CLI BACKEND: runs `kqsvd conformance` on every device of
# BACKEND (cpu, vulkan, opencl) that the CLI finds. Exit 77 (ctest SKIPPED)
# when there is none (module or driver missing), 1 if any device fails.
# KQSVD_CONFORMANCE_REQUIRE (space-separated backends, e.g. "vulkan opencl")
# turns a missing backend into a failure, for machines known to have one.
cli=$1
backend=$2
if [ -z "$cli" ] || [ -z "$backend" ]; then
  echo "usage: run_backend.sh CLI BACKEND" >&2
  exit 2
fi
devices=$("$cli" conformance --list-devices) || {
  echo "run_backend.sh: '$cli conformance --list-devices' failed" >&2
  exit 1
}
found=0
status=0
for dev in $devices; do
  case "$dev" in
  "$backend" | "$backend":*) ;;
  *) continue ;;
  esac
  found=1
  echo "== $dev"
  "$cli" conformance --device "$dev" || status=1
done
if [ "$found" = 0 ]; then
  for required in $KQSVD_CONFORMANCE_REQUIRE; do
    if [ "$required" = "$backend" ]; then
      echo "run_backend.sh: no $backend device found, but KQSVD_CONFORMANCE_REQUIRE lists it" >&2
      exit 1
    fi
  done
  echo "run_backend.sh: no $backend device found: SKIPPED" >&2
  exit 77
fi
exit $status
