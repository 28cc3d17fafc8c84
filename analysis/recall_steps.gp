# recall_steps.gp - attention-mass recall against decode step, one line per policy (a
# moving mean over `smooth` steps; the raw values thin when raw = 1), one panel per
# budget, the legend in a panel of its own (right on screen, below in print).
# Data (kvsim plot): rs_bB_pP.dat = step, recall, smoothed recall; panel[B] the panel's
# heading; keep[(B-1)*n_pol+P] 0 for a policy not drawn (full, constant at 1); y_lo.

n_cols_p = columns == 2 ? (n_b > 3 ? 2 : n_b) : 1
n_cols_s = n_b > 4 ? 2 : 1
key_cols = columns == 2 ? 6 : 3
key_h1 = ceil(n_pol / 3.0) * 0.14 + 0.12
key_h2 = ceil(n_pol / 6.0) * 0.14 + 0.12
paper_h1 = 1.15 * n_b + 0.45 + key_h1
paper_h2 = 1.6 * ceil(n_b / real(n_cols_p)) + 0.45 + key_h2
load adir . "/common.gp"

n_cols = paper ? n_cols_p : n_cols_s
n_rows = int((n_b + n_cols - 1) / n_cols)
# the plotting area and the legend's, in screen coordinates
if (paper) {
    key_top = (columns == 2 ? key_h2 : key_h1) / h_in
    area_l = 0.11 * 3.4 / w_in + 0.02; area_r = 0.98
    area_b = key_top + 0.32 / h_in; area_t = 1 - 0.12 / h_in
} else {
    area_l = 0.09; area_r = 0.80; area_b = 0.08; area_t = 0.90
}
set multiplot layout n_rows, n_cols margins area_l, area_r, area_b, area_t \
    spacing (paper ? 0.06 : 0.08), (paper ? 0.22 / h_in * 2 : 0.1)
if (!paper) {
    set label 99 "Attention-mass recall per decode step" at screen 0.45, 0.97 center \
        font title_font
}
set label 98 "recall" at screen (paper ? 0.02 : 0.02), (area_b + area_t) / 2 rotate center
set yrange [y_lo : 1.02]
set ytics 0.2
set autoscale xfix
unset key
mark = 40   # a point every `mark` steps, offset per policy, for greyscale prints
do for [b = 1:n_b] {
    set title panel[b] font small_font offset 0, (paper ? -0.6 : 0)
    if (b > n_b - n_cols) { set xlabel "decode step t" } else { unset xlabel }
    if (raw) {
        plot for [p = 1:n_pol] sprintf("rs_b%d_p%d.dat", b, p) \
                 using 1:(keep[(b - 1) * n_pol + p] ? $2 : NaN) with lines lt p dt 1 lw 0.4 notitle, \
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
kept(p) = sum [b = 1:n_b] keep[(b - 1) * n_pol + p]
unset title; unset xlabel; unset ylabel; unset border; unset tics; unset grid
set xrange [0:1]; set yrange [0:1]
if (paper) {
    set lmargin at screen 0.01; set rmargin at screen 0.99
    set tmargin at screen key_top; set bmargin at screen 0.0
    set key at screen 0.5, key_top center top horizontal maxcols key_cols samplen 2.5 \
        spacing 0.9 width -1
} else {
    set lmargin at screen 0.82; set rmargin at screen 0.99
    set tmargin at screen area_t; set bmargin at screen area_b
    set key at screen 0.99, area_t right top vertical spacing 1.2 box samplen 3
}
plot for [p = 1:n_pol] NaN with linespoints lt p ps 0.6 title (kept(p) ? pol[p] : "")
unset multiplot
