# recall_bytes.gp - mean recall against the memory a run needed (peak KV + metadata
# bytes), one line per policy through its budgets, with 95% intervals.
# Data (kvsim plot): rx_pP.dat = peak KiB, recall_mean, recall_ci_lo, recall_ci_hi,
# sorted; x_lo, x_hi, y_lo.
n_xt = 0
load adir . "/common.gp"
call adir . "/recall_against.gp" "rx" "peak KV + metadata in KiB" \
    "Mean attention-mass recall against the memory it took"
