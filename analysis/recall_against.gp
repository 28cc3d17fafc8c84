# recall_against.gp - the body shared by recall_budget.gp and recall_bytes.gp:
#   call adir."/recall_against.gp" PREFIX XLABEL TITLE
# plots PREFIX_pP.dat (x, mean, lo, hi) for every policy, with error bars, log x.

g_nr = 1; g_nc = 1; g_gx = 0; g_gy = 0
if (paper) {
    g_l = 4.4 * em; g_r = 0.8 * em; g_t = 0.8 * em
    dummy = key_layout(n_pol, w_in - 0.1, label_chars)
    g_b = 3.0 * em + key_h
    if (fixed_h) { h_in = grid_h(columns == 2 ? 2.4 : 2.0) }
} else {
    g_l = 5.0 * em; g_r = key_w(label_chars) + 2 * em; g_t = 4.0 * em; g_b = 3.6 * em
}
load adir . "/terminal.gp"

if (!paper) { set title ARG3 font title_font }
set multiplot
call adir . "/panel.gp" 1 1
set xlabel ARG2 . ", log scale" offset 0, (paper ? 0.7 : 0.3)
# the y label at the figure's left edge, clear of the tick labels
set label 98 "mean recall" at screen 0.8 * em / w_in, (py1(1) + py0(1)) / 2 rotate center
set logscale x 2
set xrange [x_lo / 1.25 : x_hi * 1.25]
set format x "%g"
# a tick at every budget run while they are the same for all policies and few
if (n_xt > 0 && n_xt <= 10 && xt_val[1] > 0) {
    set xtics ()
    do for [i = 1:n_xt] { set xtics add (xt_lab[i] xt_val[i]) }
}
set yrange [y_lo : 1.02]
set errorbars 1.0 dt solid lw 1
set bars small
# points of one x spread a little sideways so their bars stay apart
shift(p) = 1.0 + 0.02 * (p - (n_pol + 1) / 2.0)
plot for [p = 1:n_pol] sprintf("%s_p%d.dat", ARG1, p) using ($1 * shift(p)):2:3:4 \
    with yerrorlines lt p ps 0.6 notitle
unset title
call adir . "/key.gp"
plot for [p = 1:n_pol] NaN with linespoints lt p ps 0.6 title pol[p]
unset multiplot
