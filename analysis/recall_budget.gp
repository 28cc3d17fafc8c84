# recall_budget.gp - mean recall against budget, one line per policy, with 95% intervals.
# Data (kvsim plot): rb_pP.dat = x (tokens, or KiB when x_bytes), recall_mean,
# recall_ci_lo, recall_ci_hi, sorted by x; x_lo, x_hi, y_lo; xt_val[i], xt_lab[i]
# (n_xt budget ticks; xt_val -1: a prompt share, no fixed tick).
load adir . "/common.gp"
call adir . "/recall_against.gp" "rb" \
    (x_bytes ? "budget in KiB of KV + metadata" : "budget B in tokens") \
    "Mean attention-mass recall against budget"
