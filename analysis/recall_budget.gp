# recall_budget.gp - mean recall against budget, one line per policy, with 95% intervals.
# Data (kvsim plot): rb_pP.dat = x (tokens, or KiB when x_bytes), recall_mean,
# recall_ci_lo, recall_ci_hi, sorted by x; x_lo, x_hi, y_lo; xt_val[i], xt_lab[i]
# (n_xt budget ticks; xt_val -1: a prompt share, no fixed tick).

paper_h1 = 2.2 + ceil(n_pol / 3.0) * 0.15
paper_h2 = 2.6 + ceil(n_pol / 6.0) * 0.15
load adir . "/common.gp"
call adir . "/recall_against.gp" "rb" \
    (x_bytes ? "budget (KiB of KV + metadata, log scale)" : "budget B (tokens, log scale)") \
    "Mean attention-mass recall against budget"
