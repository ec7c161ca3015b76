#!/usr/bin/env bash
# Prints the README's CLI reference from the built CLI's own --help texts,
# so the two cannot drift apart: bash .ci/cli-reference.sh [build/bin/kqsvd]
set -euo pipefail
kq=${1:-build/bin/kqsvd}
echo '`kqsvd --help`:'
echo
echo '```'
"$kq" --help
echo '```'
for cmd in synth fit eval info devices conformance bench capture ppl generate; do
  echo
  echo "### kqsvd $cmd"
  echo
  echo '```'
  "$kq" "$cmd" --help
  echo '```'
done
