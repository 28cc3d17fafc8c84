# recall_steps.gp - attention-mass recall against decode step, one line per policy (a
# moving mean over `smooth` steps; the raw values thin when raw = 1), one panel per
# budget, the legend outside the panels (right on screen, below in print).
# Data (kvsim plot): rs_bB_pP.dat = step, recall, smoothed recall; panel[B] the panel's
# heading; keep[(B-1)*n_pol+P] 0 for a policy not drawn (full, constant at 1); y_lo.
load adir . "/common.gp"

kept(p) = sum [b = 1:n_b] keep[(b - 1) * n_pol + p]
n_kept = sum [p = 1:n_pol] (kept(p) > 0)
g_nc = paper ? (columns == 2 ? (n_b > 3 ? 3 : n_b) : 1) : (n_b > 4 ? 2 : 1)
g_nr = int((n_b + g_nc - 1) / g_nc)
if (paper) {
    g_l = 3.6 * em; g_r = 0.8 * em; g_t = 1.5 * em; g_gx = 1.2 * em; g_gy = 1.7 * em
    dummy = key_layout(n_kept, w_in - 0.1, label_chars)
    g_b = 3.0 * em + key_h
    if (fixed_h) { h_in = grid_h(columns == 2 ? 1.4 : 0.95) }
} else {
    g_l = 5.0 * em; g_r = key_w(label_chars) + 2 * em; g_t = 4.0 * em; g_b = 3.6 * em
    g_gx = 4.0 * em; g_gy = 2.6 * em
}
load adir . "/terminal.gp"

set multiplot
if (!paper) {
    set label 99 "Attention-mass recall per decode step" at screen 0.5, 1 - 1.5 * em / h_in \
        center font title_font
}
set label 98 "recall" at screen 0.8 * em / w_in, (py1(1) + py0(g_nr)) / 2 rotate center
set yrange [y_lo : 1.02]
y_step = y_lo < 0.5 ? 0.2 : 0.1
set ytics y_step
set autoscale xfix
unset key
mark = 40   # a point every `mark` steps, offset per policy, for greyscale prints
do for [b = 1:n_b] {
    r = int((b - 1) / g_nc) + 1
    c = (b - 1) % g_nc + 1
    call adir . "/panel.gp" r c
    bottom = b + g_nc > n_b
    set format x (bottom ? "%g" : "")
    set format y (c == 1 ? "%g" : "")
    if (bottom) { set xlabel "decode step t" offset 0, (paper ? 0.7 : 0.3) } else { unset xlabel }
    set label 97 panel[b] at graph 0.5, graph 1 center offset 0, 0.55 font small_font
    if (raw) {
        plot for [p = 1:n_pol] sprintf("rs_b%d_p%d.dat", b, p) \
                 using 1:(keep[(b - 1) * n_pol + p] ? $2 : NaN) with lines lt p dt 1 lw 0.3 notitle, \
             for [p = 1:n_pol] sprintf("rs_b%d_p%d.dat", b, p) \
                 using 1:(keep[(b - 1) * n_pol + p] ? $3 : NaN) with lines lt p notitle, \
             for [p = 1:n_pol] sprintf("rs_b%d_p%d.dat", b, p) every mark::(3 * p) \
                 using 1:(keep[(b - 1) * n_pol + p] ? $3 : NaN) with points lt p ps 0.5 notitle
    } else {
        plot for [p = 1:n_pol] sprintf("rs_b%d_p%d.dat", b, p) \
                 using 1:(keep[(b - 1) * n_pol + p] ? $3 : NaN) with lines lt p notitle, \
             for [p = 1:n_pol] sprintf("rs_b%d_p%d.dat", b, p) every mark::(3 * p) \
                 using 1:(keep[(b - 1) * n_pol + p] ? $3 : NaN) with points lt p ps 0.5 notitle
    }
    unset label 99
    unset label 98
}
# the legend: every policy drawn in some panel
call adir . "/key.gp"
plot for [p = 1:n_pol] NaN with linespoints lt p ps 0.6 title (kept(p) ? pol[p] : "")
unset multiplot
