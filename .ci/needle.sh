#!/usr/bin/env bash
# Passkey retrieval (docs/long-context.md): filler text from Debian's license
# files with the sentence "The passkey is NNNNN. Remember it." at several
# depths, then the question; greedy `kqsvd generate --chat -n 10` with the
# full cache and each compressed cache; a trial passes when the generated
# text contains the passkey. Prints one line per trial and the accuracy per
# cache and length.
# usage: .ci/needle.sh [NAME=PROJ]...   (no argument: the full cache only)
# Env: KQ (the CLI), KQ_OUT (default build/needle), KQSVD_DEVICE, LENGTHS (prompt
#      lengths in tokens, default "1024 2048 4096"), DEPTHS (where the passkey
#      sits, as a fraction of the filler, default "0.1 0.5 0.9"), THREADS,
#      KEY_OFFSET (added to the trial number the passkeys derive from, default
#      0: runs with other offsets draw other keys, so their trials can be pooled),
#      FULL (0: skip the full cache, e.g. to add a cache to the trials of an
#      earlier run with the same LENGTHS, DEPTHS and KEY_OFFSET: same prompts).
set -euo pipefail
cd "$(dirname "$0")/.."
KQ=${KQ:-build/bin/kqsvd}
OUT=${KQ_OUT:-build/needle}
dev=${KQSVD_DEVICE:-cpu}
lengths=${LENGTHS:-"1024 2048 4096"}
depths=${DEPTHS:-"0.1 0.5 0.9"}
threads=(${THREADS:+--threads "$THREADS"})
mkdir -p "$OUT"
model=$(bash .ci/fetch-model.sh)
caches=()
[ "${FULL:-1}" = 0 ] || caches=("full=")
caches+=("$@")
[ ${#caches[@]} -gt 0 ] || { echo "needle.sh: FULL=0 and no cache given" >&2; exit 2; }

# The prompt of one trial: about LENGTH tokens (4.5 characters a token, as
# GPL-3 under this tokenizer: 35,149 bytes, 7,639 tokens), whole lines of
# filler, the passkey sentence after the line at DEPTH.
make_prompt() { # LENGTH DEPTH KEY FILE
  python3 - "$@" <<'EOF'
import sys
length, depth, key, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
src = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/LGPL-3",
       "/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/MPL-2.0"]
lines = [l.strip() for p in src for l in open(p, encoding="utf-8", errors="replace")]
lines = [l for l in lines if l]
intro = ("There is a passkey hidden in the long text below. Find it and remember it; "
         "I will ask for it at the end.\n\n")
question = "\n\nWhat is the passkey? Answer with the passkey only."
budget = int(length * 4.5) - len(intro) - len(question) - 40
filler, n = [], 0
for l in lines:
    if n + len(l) + 1 > budget:
        break
    filler.append(l)
    n += len(l) + 1
at = int(round(depth * len(filler)))
filler.insert(at, "The passkey is %s. Remember it. The passkey is %s." % (key, key))
open(path, "w").write(intro + "\n".join(filler) + question)
EOF
}

results="$OUT/results.txt"
: >"$results"
trial=${KEY_OFFSET:-0}
for len in $lengths; do
  for depth in $depths; do
    trial=$((trial + 1))
    key=$(((trial * 7919 + 10007) % 90000 + 10000))
    prompt="$OUT/prompt-$len-$depth.txt"
    make_prompt "$len" "$depth" "$key" "$prompt"
    for c in "${caches[@]}"; do
      name=${c%%=*} proj=${c#*=}
      args=()
      [ -z "$proj" ] || args=(--proj "$proj")
      out="$OUT/gen-$name-$len-$depth.txt"
      "$KQ" generate "$model" --chat --prompt "$(cat "$prompt")" -n 10 --device "$dev" \
        --storage f16 "${threads[@]}" "${args[@]}" >"$out" 2>"$out.log"
      answer=$(tr '\n' ' ' <"$out") # --chat prints only the reply
      tokens=$(grep -o 'prompt [0-9]* tokens' "$out.log" | grep -o '[0-9]*' || echo '?')
      ok=0
      case $answer in *"$key"*) ok=1 ;; esac
      printf '%s len %s depth %s tokens %s key %s ok %d answer: %s\n' "$name" "$len" "$depth" \
        "$tokens" "$key" "$ok" "$answer" | tee -a "$results"
    done
  done
done

echo "== passkey accuracy (trials passed / trials) =="
awk '{ k = $1 " " $3; n[k]++; s[k] += $11; if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
  END { for (i = 1; i <= m; i++) printf "%-20s len %-5s %d/%d\n", substr(order[i], 1, index(order[i], " ") - 1), substr(order[i], index(order[i], " ") + 1), s[order[i]], n[order[i]] }' "$results"
