# Sourced by .ci/main-job.sh and .ci/kl-chart.sh (needs $KQ):
#   kq_fit_at_budget NAME CALIB PROJ BUDGET
# fits method NAME (kq-svd, kq-svd-joint, quant, k-svd, eigen) from CALIB to PROJ at
# ${BUDGET_FLAG:---bytes} BUDGET, the fit's log in PROJ.log, and sets kq_fit_label to the
# name to show for it ("NAME (float, --ratio)" for a float-only low-rank fit). K-SVD and
# Eigen, where the fit has no byte budget for them, fall back to float-only low rank at
# --ratio BUDGET (the same fraction of latent dims), labelled so.
#   kq_fit_sensitive NAME CALIB PROJ BUDGET (--bytes only)
# the same fit, then again with the model's measured per-layer sensitivity (fit --sensitivity).
kq_fit_at_budget() {
  local name=$1 calib=$2 proj=$3 budget=$4 flag=${BUDGET_FLAG:---bytes}
  local args
  case $name in
    kq-svd-joint) args=(--method kq-svd --layout joint) ;;
    *) args=(--method "$name") ;;
  esac
  kq_fit_label=$name
  [ "$flag" != --ratio ] || kq_fit_label="$name (float, --ratio)"
  "$KQ" fit "$calib" -o "$proj" "${args[@]}" "$flag" "$budget" 2>"$proj.log" && return 0
  case $name in
    k-svd | eigen) [ "$flag" != --ratio ] || { cat "$proj.log" >&2; return 1; } ;;
    *) cat "$proj.log" >&2; return 1 ;;
  esac
  echo "fit: $name at $flag $budget refused ($(head -n 1 "$proj.log")); float low rank at --ratio $budget" >&2
  "$KQ" fit "$calib" -o "$proj" "${args[@]}" --ratio "$budget" 2>"$proj.log" || {
    cat "$proj.log" >&2
    return 1
  }
  kq_fit_label="$name (float, --ratio)"
}

# kq_sensitivity_for CALIB PROJ: prints the path of a sensitivity file for PROJ (a --bytes fit
# from CALIB without --sensitivity), found by the sha256 of PROJ's tensor data (.ci/st_data_sha.py) in .ci/sensitivity/*.kl (committed
# measurements) or $KQ_SENSITIVITY_CACHE (default ~/.cache/kqsvd/sensitivity), else measured by
# .ci/sensitivity.sh into that cache (2 · n_layers forward passes over 512 tokens: minutes).
kq_sensitivity_for() {
  local calib=$1 proj=$2 sha hit
  sha=$(python3 .ci/st_data_sha.py "$proj") || return 1
  hit=$(grep -l "data_sha256 $sha\$" .ci/sensitivity/*.kl 2>/dev/null | head -n 1 || true)
  [ -z "$hit" ] || { echo "$hit"; return 0; }
  local dir=${KQ_SENSITIVITY_CACHE:-$HOME/.cache/kqsvd/sensitivity}
  if [ ! -s "$dir/$sha.kl" ]; then
    mkdir -p "$dir"
    echo "sensitivity of $(basename "$proj"): measuring (not cached; .ci/sensitivity.sh)" >&2
    bash .ci/sensitivity.sh "$calib" "$proj" "$dir/$sha.kl" >&2 || return 1
  fi
  echo "$dir/$sha.kl"
}

# kq_fit_sensitive NAME CALIB PROJ BUDGET: kq_fit_at_budget to PROJ.base, the model's
# sensitivity to it (kq_sensitivity_for), then the fit again with --sensitivity into PROJ.
kq_fit_sensitive() {
  local name=$1 calib=$2 proj=$3 budget=$4 base=${3%.safetensors}.base.safetensors sens
  kq_fit_at_budget "$name" "$calib" "$base" "$budget" || return 1
  sens=$(kq_sensitivity_for "$calib" "$base") || return 1
  local args
  case $name in
    kq-svd-joint) args=(--method kq-svd --layout joint) ;;
    *) args=(--method "$name") ;;
  esac
  "$KQ" fit "$calib" -o "$proj" "${args[@]}" --bytes "$budget" --sensitivity "$sens" 2>"$proj.log" ||
    { cat "$proj.log" >&2; return 1; }
}
