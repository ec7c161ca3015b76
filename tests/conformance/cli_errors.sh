#!/bin/sh
# cli_errors.sh CLI: `kqsvd conformance` usage and error paths: exit codes
# (0 ok, 1 failure, 2 usage) and messages that name what is wrong.
cli=$1
fails=0
check() { # check EXPECTED_RC PATTERN ARGS...: exit code and a pattern in the output
  want=$1 pattern=$2
  shift 2
  out=$("$cli" conformance "$@" 2>&1)
  rc=$?
  if [ "$rc" != "$want" ]; then
    echo "FAIL: kqsvd conformance $*: exit $rc, expected $want" >&2
    fails=$((fails + 1))
  elif ! printf '%s\n' "$out" | grep -q -- "$pattern"; then
    echo "FAIL: kqsvd conformance $*: output lacks '$pattern':" >&2
    printf '%s\n' "$out" >&2
    fails=$((fails + 1))
  fi
}
check 0 "usage: kqsvd conformance" --help
check 2 "unknown argument '--bogus'" --bogus
check 2 "--filter needs a value" --filter
check 2 "invalid filter" --filter "("
check 2 "matches no case" --filter "no-such-case"
check 1 "no-such-device" --device no-such-device --filter "_n7_"
check 1 "vulkan:99" --device vulkan:99 --filter "_n7_"
check 0 "^cpu$" --list-devices
check 2 "takes no other argument" --list-devices extra
check 0 "_error$" --list --filter "_error"
# --list prints exactly the selected names, one per line
n=$("$cli" conformance --list --filter "_f16_" | grep -c "_f16_")
all=$("$cli" conformance --list --filter "_f16_" | wc -l)
if [ "$n" -lt 1 ] || [ "$n" != "$all" ]; then
  echo "FAIL: --list --filter _f16_ printed $all lines, $n matching" >&2
  fails=$((fails + 1))
fi
# a run that passes exits 0 and says so
check 0 "cases passed" --device cpu --filter "_n7_"
# quantized / joint cases: passed, or "unsupported" (counted apart) on a
# device without the kernels; either way the run exits 0 and counts them
check 0 "unsupported, 0 failed" --device cpu --filter "_joint|_kq"
check 0 "_joint" --list --filter "_joint"
[ "$fails" = 0 ] && echo "cli_errors: all checks passed"
[ "$fails" = 0 ]
