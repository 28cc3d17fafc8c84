# predict.gp - does an open-loop metric predict what the cache does to the model's output?
# Left: mean recall (x) against the closed loop's kl_mean (y, log scale); right: mean
# output error (x) against the same KL; one point per (policy, budget), one colour per
# policy.
# Data (kvsim plot): pr_pP.dat = recall_mean, out_err_mean (-1: none), kl_mean of policy
# P's rows with kl_mean > 0; have_kl (0: no closed-loop results), have_err, y_lo, y_hi
# (the KL range, whole decades), e_hi (the output error's axis end).
load adir . "/common.gp"

g_nr = 1; g_nc = 2
if (paper) {
    g_l = 5.2 * em; g_r = 1.0 * em; g_t = 0.8 * em; g_gx = 1.2 * em; g_gy = 0
    dummy = key_layout(n_pol, w_in - 0.1, label_chars)
    g_b = 3.0 * em + key_h
    if (fixed_h) { h_in = grid_h(columns == 2 ? 2.4 : 2.0) }
} else {
    g_l = 5.5 * em; g_r = key_w(label_chars) + 2 * em; g_t = 4.0 * em; g_b = 3.6 * em
    g_gx = 2.5 * em; g_gy = 0
}
load adir . "/terminal.gp"

set multiplot
if (!paper) {
    set label 99 "Open-loop metrics against the closed loop's KL from the full cache" \
        at screen 0.5, 1 - 1.8 * em / h_in center font title_font
}
if (!have_kl) {
    call adir . "/panel.gp" 1 1
    unset border; unset tics
    set xrange [0:1]; set yrange [0:1]
    set label 1 "no closed-loop results: run kvsim run with --model CHECKPOINT" \
        at 1.1, 0.5 center
    plot NaN notitle
    unset multiplot
    exit
}
set label 98 (paper ? "KL, nats per token" : "KL(full || policy), nats per token, log scale") \
    at screen 0.8 * em / w_in, (py1(1) + py0(1)) / 2 rotate center
set logscale y 10
set yrange [y_lo : y_hi]
set format y (paper ? "%.0e" : "%g")

call adir . "/panel.gp" 1 1
set xlabel "mean recall" offset 0, (paper ? 0.7 : 0.3)
set xrange [0 : 1.02]
if (paper) { set xtics 0.5 }
plot for [p = 1:n_pol] sprintf("pr_p%d.dat", p) using 1:3 with points lt p ps 0.8 notitle

unset label 98
unset label 99
call adir . "/panel.gp" 1 2
set xlabel (paper ? "output error" : "mean output error (relative L2)") \
    offset 0, (paper ? 0.7 : 0.3)
set xrange [0 : e_hi]
if (paper) { set xtics 0, (e_hi > 0.2 ? 0.1 : 0.05); set format x "%g" }
set format y ""
if (have_err) {
    plot for [p = 1:n_pol] sprintf("pr_p%d.dat", p) using ($2 >= 0 ? $2 : NaN):3 \
        with points lt p ps 0.8 notitle
} else {
    set label 1 "no output error: the traces have no v" at graph 0.5, 0.5 center
    plot NaN notitle
    unset label 1
}
call adir . "/key.gp"
plot for [p = 1:n_pol] NaN with points lt p ps 0.8 title pol[p]
unset multiplot
