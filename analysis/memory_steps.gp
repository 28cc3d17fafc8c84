# memory_steps.gp - KV-cache bytes (solid) and policy metadata bytes (dashed) against
# decode step at one budget; policies whose lines are identical share one line.
# Data (kvsim plot): ms_K.dat = step, KV bytes (K = 1..n_kv) in linetype kv_lt[K];
# mm_M.dat = step, metadata bytes (M = 1..n_meta) in meta_lt[M]; the legend's n_key rows
# key_text[i] with linetype key_lt[i] and dash key_dt[i]; y_lo, y_hi (KiB); budget_bytes
# (a byte budget, else 0).
load adir . "/common.gp"

# legend entries name up to three policies each
key_chars = label_chars * 2.6 + 6
g_nr = 1; g_nc = 1; g_gx = 0; g_gy = 0
# the legend below the plot in both styles: its entries are long
key_below = 1
dummy = key_layout(n_key, w_in - 0.1, key_chars)
if (paper) {
    g_l = 4.6 * em; g_r = 0.8 * em; g_t = 0.8 * em
    g_b = 3.0 * em + key_h
    if (fixed_h) { h_in = grid_h(columns == 2 ? 2.2 : 1.9) }
} else {
    g_l = 6.0 * em; g_r = 2.0 * em; g_t = 4.0 * em; g_b = 3.6 * em + key_h
}
load adir . "/terminal.gp"

if (!paper) {
    set label 99 "KV-cache bytes (solid) and metadata bytes (dashed) per decode step" \
        at screen 0.5, 1 - 1.8 * em / h_in center font title_font
}
set multiplot
call adir . "/panel.gp" 1 1
set xlabel "decode step t" offset 0, (paper ? 0.7 : 0.3)
# the y label at the figure's left edge, clear of the tick labels
set label 98 "KiB, all caches" at screen 0.8 * em / w_in, (py1(1) + py0(1)) / 2 rotate center
set logscale y 2
set yrange [y_lo / 1.5 : y_hi * 1.5]
set format y "%g"
set autoscale xfix
if (budget_bytes > 0) {
    set arrow 1 from graph 0, first budget_bytes / 1024.0 to graph 1, \
        first budget_bytes / 1024.0 nohead dt 3 lc rgb "#000000" lw 1
    set label 1 sprintf("budget %s", budget) at graph 0.02, first budget_bytes / 1024.0 \
        offset 0, 0.5 font small_font
}
mark = 40
plot for [k = 1:n_kv] sprintf("ms_%d.dat", k) using 1:($2 / 1024) with lines \
         lt kv_lt[k] dt 1 notitle, \
     for [k = 1:n_kv] sprintf("ms_%d.dat", k) every mark::(5 * k) using 1:($2 / 1024) \
         with points lt kv_lt[k] ps 0.6 notitle, \
     for [m = 1:n_meta] sprintf("mm_%d.dat", m) using 1:($2 / 1024) with lines \
         lt meta_lt[m] dt 2 notitle, \
     for [m = 1:n_meta] sprintf("mm_%d.dat", m) every mark::(5 * m + 20) \
         using 1:($2 / 1024) with points lt meta_lt[m] ps 0.6 notitle
unset title
call adir . "/key.gp"
plot for [i = 1:n_key] NaN with linespoints lt key_lt[i] dt key_dt[i] ps 0.6 \
    title key_text[i]
unset multiplot
