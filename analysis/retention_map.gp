# retention_map.gp - which positions every (layer, KV head) cache still holds at the end
# of the trace, one panel per policy (full left out: it holds everything), at one budget.
# Data (kvsim plot): rm_pK.dat = position, layer, kv_head of every held position of
# panel K (K = 1..n_panels, policy panel_pol[K]); P, T, n_layers, n_kv.

n_cols_s = n_panels > 3 ? 2 : 1
n_cols_p = columns == 2 ? (n_panels > 3 ? 3 : n_panels) : (n_panels > 3 ? 2 : 1)
n_rows_p = ceil(n_panels / real(n_cols_p))
paper_h1 = 0.35 + n_rows_p * 0.75
paper_h2 = 0.35 + n_rows_p * 0.85
load adir . "/common.gp"

n_cols = paper ? n_cols_p : n_cols_s
n_rows = int((n_panels + n_cols - 1) / n_cols)
n_rows_y = n_layers * n_kv
if (paper) {
    area_l = 0.3 / w_in; area_r = 0.99; area_b = 0.3 / h_in; area_t = 0.99
} else {
    area_l = 0.07; area_r = 0.98; area_b = 0.08; area_t = 0.88
}
set multiplot layout n_rows, n_cols margins area_l, area_r, area_b, area_t \
    spacing (paper ? 0.04 : 0.05), (paper ? 0.3 / h_in : 0.1)
if (!paper) {
    set label 99 sprintf("Positions still cached at the end of the trace (dark), per layer " \
        . "and KV head; dashed: end of the prompt (P = %d)", P) at screen 0.5, 0.96 \
        center font title_font
}
set palette defined (0 "#ffffff", 1 "#08306b")
set cbrange [0:1]
unset colorbox
unset grid
set xrange [-0.5 : T - 0.5]
set yrange [-0.5 : n_rows_y - 0.5]
# A tick per layer while the labels fit the panel's height, else every few layers.
panel_pt = (area_t - area_b) * h_in * 72 / n_rows * 0.6
layer_step = ceil(n_layers * small_pt * 1.3 / panel_pt)
layer_step = layer_step < 1 ? 1 : layer_step
set ytics () nomirror scale 0 font small_font
do for [l = 0:n_layers - 1:layer_step] {
    set ytics add (sprintf("L%d", l) l * n_kv + (n_kv - 1) / 2.0)
}
set xtics font small_font
do for [l = 1:n_layers - 1] {
    set arrow l from graph 0, first l * n_kv - 0.5 to graph 1, first l * n_kv - 0.5 \
        nohead lc rgb "#bbbbbb" lw 0.5 front
}
set arrow 100 from first P - 0.5, graph 0 to first P - 0.5, graph 1 nohead dt 2 \
    lc rgb "#D55E00" lw 1 front
set style fill solid noborder
do for [k = 1:n_panels] {
    set title pol[panel_pol[k]] font small_font offset 0, -0.5
    if (k > n_panels - n_cols) { set xlabel "position j" font small_font offset 0, 0.5 } \
    else { unset xlabel }
    # boxes a little wider than a position, so neighbours overlap instead of leaving seams
    plot sprintf("rm_p%d.dat", k) using 1:($2 * n_kv + $3):(0.75):(0.5):(1) \
        with boxxyerror lc palette notitle
    unset label 99
}
unset multiplot
