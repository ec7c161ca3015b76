#!/bin/sh
# run_json_check.sh CLI CHECKER DEVICE FILTER: runs the suite with --json and
# checks the output with check_json (every case passed, finite NMSE).
cli=$1 checker=$2 device=$3 filter=$4
out=$(mktemp "${TMPDIR:-/tmp}/kqsvd-conformance-XXXXXX.json") || exit 1
trap 'rm -f "$out"' EXIT
"$cli" conformance --device "$device" --filter "$filter" --json >"$out"
rc=$?
"$checker" "$out" || exit 1
if [ "$rc" != 0 ]; then
  echo "run_json_check.sh: kqsvd conformance exited $rc" >&2
  exit 1
fi
exit 0
