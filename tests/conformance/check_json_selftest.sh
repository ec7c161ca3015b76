#!/bin/sh
# check_json_selftest.sh CHECKER DIR: the JSON checker accepts a good report
# and one with an unsupported case, and rejects each kind of bad one (failed
# case, null NMSE, NMSE above the threshold, a device that failed to open, no
# cases, truncated JSON, an unsupported case that claims pass, a report with
# nothing but unsupported cases).
checker=$1 dir=$2
fails=0
for good in good unsupported; do
  "$checker" "$dir/$good.json" >/dev/null || {
    echo "FAIL: $good.json rejected" >&2
    fails=1
  }
done
for bad in failed_case nan_nmse above_threshold device_error no_cases truncated unsupported_pass \
  only_unsupported; do
  if "$checker" "$dir/$bad.json" >/dev/null 2>&1; then
    echo "FAIL: $bad.json accepted" >&2
    fails=1
  fi
done
[ "$fails" = 0 ] && echo "check_json_selftest: all checks passed"
[ "$fails" = 0 ]
