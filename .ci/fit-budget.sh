# Sourced by .ci/main-job.sh and .ci/kl-chart.sh (needs $KQ):
#   kq_fit_at_budget NAME CALIB PROJ BUDGET
# fits method NAME (kq-svd, kq-svd-joint, quant, k-svd, eigen) from CALIB to PROJ at
# ${BUDGET_FLAG:---bytes} BUDGET, the fit's log in PROJ.log, and sets kq_fit_label to the
# name to show for it ("NAME (float, --ratio)" for a float-only low-rank fit). K-SVD and
# Eigen, where the fit has no byte budget for them, fall back to float-only low rank at
# --ratio BUDGET (the same fraction of latent dims), labelled so.
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
