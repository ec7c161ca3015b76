#!/bin/sh
# `kqsvd info` end to end: valid files list their tensors, metadata and
# ranks; malformed, missing and GGUF files exit non-zero naming the file.
# usage: test_cli_info.sh KQSVD_CLI TEST_PROJECTIONS
set -u
cli=$1
make_proj=$2
dir=$(mktemp -d "${TMPDIR:-/tmp}/kq_cli_info_XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# st FILE JSON DATA_BYTES: a safetensors file with that header.
st() {
  n=$(printf '%s' "$2" | wc -c | tr -d ' ')
  b0=$((n % 256)); b1=$((n / 256 % 256))
  printf "\\$(printf '%03o' $b0)\\$(printf '%03o' $b1)\\000\\000\\000\\000\\000\\000" >"$1"
  printf '%s' "$2" >>"$1"
  head -c "$3" /dev/zero >>"$1"
}

# expect_fail NAME FILE MENTION: non-zero exit, no signal, stderr names FILE and MENTION.
expect_fail() {
  "$cli" info "$2" >"$dir/out" 2>"$dir/err"
  rc=$?
  if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then fail "$1: exit status $rc"; fi
  grep -qF "$(basename "$2")" "$dir/err" || fail "$1: stderr does not name the file: $(cat "$dir/err")"
  [ -z "$3" ] || grep -qF "$3" "$dir/err" || fail "$1: stderr does not mention $3: $(cat "$dir/err")"
}

# Malformed safetensors.
printf 'abc' >"$dir/truncated.safetensors"
expect_fail truncated "$dir/truncated.safetensors" ""
printf '\377\377\000\000\000\000\000\000{}' >"$dir/len_past_eof.safetensors"
expect_fail len_past_eof "$dir/len_past_eof.safetensors" ""
st "$dir/bad_dtype.safetensors" '{"weight":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}}' 2
expect_fail bad_dtype "$dir/bad_dtype.safetensors" "'weight'"
st "$dir/overlap.safetensors" '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}' 12
expect_fail overlap "$dir/overlap.safetensors" "'b'"
expect_fail missing "$dir/no_such_file.safetensors" ""
printf 'GGUF\003\000\000\000' >"$dir/model.gguf"
expect_fail gguf "$dir/model.gguf" ""

# A valid safetensors file: table with name, dtype, shape, bytes and metadata.
st "$dir/good.safetensors" '{"__metadata__":{"seq_len":"128"},"layers.0.k":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}' 12
if "$cli" info "$dir/good.safetensors" >"$dir/out" 2>"$dir/err"; then
  grep -q 'layers\.0\.k  *F16  *\[2, 3\]  *12$' "$dir/out" || fail "good: tensor row missing: $(cat "$dir/out")"
  grep -q 'seq_len  *128' "$dir/out" || fail "good: metadata missing"
else
  fail "good: exit status $?: $(cat "$dir/err")"
fi
if "$cli" info "$dir/good.safetensors" --json >"$dir/out" 2>"$dir/err"; then
  grep -q '"name":[[:space:]]*"layers.0.k"' "$dir/out" || fail "json: no tensor name: $(cat "$dir/out")"
  grep -q '"seq_len":[[:space:]]*"128"' "$dir/out" || fail "json: no metadata"
else
  fail "json: exit status $?"
fi

# Projection files: ranks per layer; a contradictory one fails naming the tensor.
"$make_proj" --write-files "$dir" || fail "could not write projection files"
if "$cli" info "$dir/valid.kqproj" >"$dir/out" 2>"$dir/err"; then
  grep -q 'rank_k' "$dir/out" || fail "proj: no rank table: $(cat "$dir/out")"
  grep -Eq '^ +1 +2 +2 +' "$dir/out" || fail "proj: no row for layer 1: $(cat "$dir/out")"
else
  fail "proj: exit status $?: $(cat "$dir/err")"
fi
expect_fail rank_above_d "$dir/rank_k_above_d.kqproj" "layers.0.key_down"
expect_fail missing_field "$dir/missing_head_dim.kqproj" "'head_dim'"

# Usage.
"$cli" info --help >/dev/null 2>&1 || fail "--help exit status $?"
"$cli" info >/dev/null 2>&1
[ $? -eq 2 ] || fail "no FILE should be a usage error (2)"

[ "$failures" -eq 0 ] && echo "all kqsvd info checks passed"
exit "$failures"
