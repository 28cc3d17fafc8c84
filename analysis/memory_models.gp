# memory_models.gp - KV + metadata bytes against decoded tokens at named model
# geometries (kvsim project), one panel per model, one line per policy (its KV bytes
# alone dotted where it has metadata), log scale, the legend outside the panels.
# Data (kvsim plot, with DIR/projection.tsv): mm_mM_pP.dat = decoded tokens, KV + metadata
# MiB, KV MiB; model[M] the panel's model; has_meta[(M-1)*n_pol+P]; y_lo, y_hi (MiB).
load adir . "/common.gp"

g_nc = paper ? (columns == 2 ? n_m : 1) : n_m
g_nr = int((n_m + g_nc - 1) / g_nc)
# legend entries: the policy, then "(KV only)" rows for policies with metadata
n_keys = n_pol + 1
key_chars = label_chars > 17 ? label_chars : 17
if (paper) {
    g_l = 4.2 * em; g_r = 0.8 * em; g_t = 1.5 * em; g_gx = 1.2 * em; g_gy = 1.7 * em
    dummy = key_layout(n_keys, w_in - 0.1, key_chars)
    g_b = 3.0 * em + key_h
    if (fixed_h) { h_in = grid_h(columns == 2 ? 1.6 : 1.1) }
} else {
    g_l = 6.0 * em; g_r = key_w(key_chars) + 2 * em; g_t = 4.0 * em; g_b = 3.6 * em
    g_gx = 2.0 * em; g_gy = 2.6 * em
}
load adir . "/terminal.gp"

set multiplot
if (!paper) {
    set label 99 "KV-cache + metadata bytes per decode step at model geometries" \
        at screen 0.5, 1 - 1.5 * em / h_in center font title_font
}
set label 98 "MiB, all caches" at screen 0.8 * em / w_in, (py1(1) + py0(g_nr)) / 2 \
    rotate center
set logscale y 2
set yrange [y_lo / 1.3 : y_hi * 1.3]
set format y "%g"
set autoscale xfix
unset key
mark = 48
do for [m = 1:n_m] {
    r = int((m - 1) / g_nc) + 1
    c = (m - 1) % g_nc + 1
    call adir . "/panel.gp" r c
    bottom = m + g_nc > n_m
    set format x (bottom ? "%g" : "")
    set format y (c == 1 ? "%g" : "")
    if (bottom) { set xlabel "decoded tokens" offset 0, (paper ? 0.7 : 0.3) } else { unset xlabel }
    set label 97 model[m] at graph 0.5, graph 1 center offset 0, 0.55 font small_font
    plot for [p = 1:n_pol] sprintf("mm_m%d_p%d.dat", m, p) using 1:2 with lines lt p notitle, \
         for [p = 1:n_pol] sprintf("mm_m%d_p%d.dat", m, p) every mark::(4 * p) \
             using 1:2 with points lt p ps 0.5 notitle, \
         for [p = 1:n_pol] sprintf("mm_m%d_p%d.dat", m, p) \
             using 1:(has_meta[(m - 1) * n_pol + p] ? $3 : NaN) with lines lt p dt 3 lw 1 notitle
    unset label 99
    unset label 98
}
call adir . "/key.gp"
plot for [p = 1:n_pol] NaN with linespoints lt p ps 0.6 title pol[p], \
     NaN with lines lc rgb "#444444" dt 3 lw 1 title "KV alone (dotted)"
unset multiplot
