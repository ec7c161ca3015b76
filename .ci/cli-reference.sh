#!/usr/bin/env bash
# Prints docs/cli.md (the CLI reference) from the built CLI's own --help texts,
# so the two cannot drift apart: bash .ci/cli-reference.sh [build/bin/kqsvd] > docs/cli.md
set -euo pipefail
kq=${1:-build/bin/kqsvd}
echo '# CLI reference'
echo
echo 'Generated from the built CLI'"'"'s own help texts by `bash .ci/cli-reference.sh > docs/cli.md`,'
echo 'so the two cannot drift apart.'
echo
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
