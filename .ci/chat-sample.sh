#!/usr/bin/env bash
# The README's generation samples at --ratio 0.5: does a compressed cache
# still produce coherent chat replies?
#   bash .ci/chat-sample.sh [OUT_DIR]       (env: DEVICE, RATIO, ROPES, METHODS, SAMPLES)
# Calibration and evaluation are the model's own chat transcripts: the full
# cache answers each prompt of .ci/chat/calib-prompts.txt (calibration) and
# of .ci/chat/heldout-prompts.txt (evaluation; no prompt in common), greedy,
# up to 200 tokens. Projections are fitted on the calibration transcripts
# (capture --special, so the chat markers are the model's control tokens),
# then each method reports its perplexity on the held-out transcripts and
# answers the first SAMPLES held-out prompts. Prints markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
KQ=${KQ:-build/bin/kqsvd}
out=${1:-build/chat-sample}
device=${DEVICE:-cpu}
ratio=${RATIO:-0.5}
ropes=${ROPES:-"post pre"}
methods=${METHODS:-"kq-svd k-svd eigen"}
samples=${SAMPLES:-4}
mkdir -p "$out"
model=$(bash .ci/fetch-model.sh)

# One transcript per prompt, two prompts at a time (one model thread each).
transcripts() { # PROMPTS OUT
  local i=0 pids=() q
  while IFS= read -r q; do
    [ -n "$q" ] || continue
    # --chat prints only the reply: the transcript is --json's rendered prompt + reply.
    "$KQ" generate "$model" --chat --prompt "$q" -n 200 --threads 1 --device "$device" --json \
      2>/dev/null | python3 -c 'import json, sys
j = json.load(sys.stdin)
sys.stdout.write(j["prompt"] + j["text"])' >"$2.part$i" &
    pids+=($!)
    i=$((i + 1))
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[@]}"; pids=(); fi
  done <"$1"
  [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
  : >"$2.tmp"
  for ((j = 0; j < i; j++)); do
    # generate stops at <|im_end|> without printing it; close every turn.
    { cat "$2.part$j"; printf '<|im_end|>\n'; } >>"$2.tmp"
    rm -f "$2.part$j"
  done
  mv "$2.tmp" "$2"
}
for set in calib heldout; do
  if [ ! -s "$out/$set.txt" ]; then
    echo "chat-sample: full-cache transcripts for .ci/chat/$set-prompts.txt" >&2
    transcripts ".ci/chat/$set-prompts.txt" "$out/$set.txt"
  fi
done

ppl_of() { # PROJ|"" -> perplexity on the held-out transcripts
  local args=("$KQ" ppl "$model" "$out/heldout.txt" --special --ctx 512 --device "$device" --json)
  if [ -n "$1" ]; then args+=(--proj "$1" --skip-full); fi
  "${args[@]}" 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)
print("%.2f" % (j["compressed"] or j["full"])["ppl"])'
}
reply() { # PROJ|"" PROMPT -> the reply on one line
  local args=("$KQ" generate "$model" --chat --prompt "$2" -n 48 --device "$device")
  if [ -n "$1" ]; then args+=(--proj "$1"); fi
  "${args[@]}" 2>/dev/null | tr '\n' ' ' | sed 's/|/\\|/g; s/  */ /g; s/ $//'
}

full=$(ppl_of "")
echo "Perplexity on the held-out transcripts (full cache $full), --ratio $ratio:"
echo
header="| RoPE |"
rule="|---|"
for m in $methods; do header="$header $m |"; rule="$rule---:|"; done
echo "$header"
echo "$rule"
for rope in $ropes; do
  calib="$out/calib-$rope.safetensors"
  [ -f "$calib" ] || "$KQ" capture "$model" "$out/calib.txt" --special -o "$calib" --seq-len 256 \
    --max-tokens 0 --rope "$rope" --device "$device" 2>/dev/null
  row="| $rope |"
  for m in $methods; do
    "$KQ" fit "$calib" -o "$out/proj-$rope-$m.safetensors" --method "$m" --ratio "$ratio" 2>/dev/null
    row="$row $(ppl_of "$out/proj-$rope-$m.safetensors") |"
  done
  echo "$row"
done

echo
echo "Replies (greedy, up to 48 tokens):"
echo
echo "| prompt | cache | reply |"
echo "|---|---|---|"
head -n "$samples" .ci/chat/heldout-prompts.txt | while IFS= read -r q; do
  echo "| $q | full | $(reply "" "$q") |"
  for rope in $ropes; do
    for m in $methods; do
      echo "| | $m $rope | $(reply "$out/proj-$rope-$m.safetensors" "$q") |"
    done
  done
done
