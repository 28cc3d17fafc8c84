# retention_map.gp - which positions every (layer, KV head) cache still holds at the end
# of the trace, one panel per policy (full left out: it holds everything), at one budget.
# Data (kvsim plot): rm_pK.dat = position, layer, kv_head of every held position of
# panel K (K = 1..n_panels, policy panel_pol[K]); P, T, n_layers, n_kv.
load adir . "/common.gp"

g_nc = paper ? (columns == 2 ? (n_panels > 3 ? 3 : n_panels) : (n_panels > 1 ? 2 : 1)) \
             : (n_panels > 3 ? 2 : 1)
g_nr = int((n_panels + g_nc - 1) / g_nc)
n_rows_y = n_layers * n_kv
if (paper) {
    g_l = 2.4 * em; g_r = 0.6 * em; g_t = 1.4 * em; g_gx = 1.0 * em; g_gy = 1.5 * em
    g_b = 3.0 * em
    if (fixed_h) { h_in = grid_h(columns == 2 ? 0.6 : 0.5) }
} else {
    g_l = 4.5 * em; g_r = 1.0 * em; g_t = 5.0 * em; g_b = 3.6 * em
    g_gx = 2.0 * em; g_gy = 2.2 * em
}
load adir . "/terminal.gp"

set multiplot
if (!paper) {
    set label 99 sprintf("Positions cached at the end of the trace (dark); dashed line: " \
        . "end of the prompt (P = %d)", P) \
        at screen 0.5, 1 - 1.8 * em / h_in center font title_font
}
set label 98 "layer" at screen 0.6 * em / w_in, (py1(1) + py0(g_nr)) / 2 rotate center
set palette defined (0 "#ffffff", 1 "#08306b")
set cbrange [0:1]
unset colorbox
unset grid
set xrange [-0.5 : T - 0.5]
set yrange [-0.5 : n_rows_y - 0.5]
# ticks: about four positions per panel; a layer label per layer while they fit
# (as many labels as fit the panel's width, each about 2.6 font sizes wide)
max_labels = floor(cw * 72 / (small_pt * 2.6))
max_labels = max_labels < 2 ? 2 : max_labels
x_step = 10 ** floor(log10(T / 4.0))
while (floor((T - 1) / x_step) + 1 > max_labels) { x_step = x_step * 2 }
set xtics x_step font small_font offset 0, (paper ? 0.4 : 0)
layer_step = ceil(n_layers * small_pt * 1.4 / (ch * 72))
layer_step = layer_step < 1 ? 1 : layer_step
set ytics () nomirror scale 0 font small_font
do for [l = 1:n_layers - 1] {
    set arrow l from graph 0, first l * n_kv - 0.5 to graph 1, first l * n_kv - 0.5 \
        nohead lc rgb "#bbbbbb" lw 0.5 front
}
set arrow 100 from first P - 0.5, graph 0 to first P - 0.5, graph 1 nohead dt 2 \
    lc rgb "#D55E00" lw 1 front
set style fill solid noborder
do for [k = 1:n_panels] {
    r = int((k - 1) / g_nc) + 1
    c = (k - 1) % g_nc + 1
    call adir . "/panel.gp" r c
    bottom = k + g_nc > n_panels
    set format x (bottom ? "%g" : "")
    # layer labels on the first column only
    unset ytics
    if (c == 1) {
        set ytics () nomirror scale 0 font small_font
        do for [l = 0:n_layers - 1:layer_step] {
            set ytics add (sprintf("%d", l) l * n_kv + (n_kv - 1) / 2.0)
        }
    }
    if (bottom) { set xlabel "position j" font small_font offset 0, (paper ? 1.0 : 0.5) } \
    else { unset xlabel }
    set label 97 pol[panel_pol[k]] at graph 0.5, graph 1 center offset 0, 0.5 font small_font
    # boxes a little wider than a position, so neighbours overlap instead of leaving seams
    plot sprintf("rm_p%d.dat", k) using 1:($2 * n_kv + $3):(0.75):(0.5):(1) \
        with boxxyerror lc palette notitle
    unset label 99
    unset label 98
}
unset multiplot
