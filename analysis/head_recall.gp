# head_recall.gp - mean recall of every (layer, query head), a heatmap per policy (full
# left out: recall 1 everywhere), at one budget, on one colour scale.
# Data (kvsim plot): hr_pK.dat = head, layer, recall_mean of panel K (policy
# panel_pol[K], K = 1..n_panels); n_layers, n_heads, c_lo.
load adir . "/common.gp"

g_nc = paper ? (columns == 2 ? (n_panels > 5 ? 6 : n_panels) : (n_panels > 2 ? 3 : n_panels)) \
             : (n_panels > 4 ? 4 : (n_panels > 1 ? 2 : 1))
g_nr = int((n_panels + g_nc - 1) / g_nc)
if (paper) {
    g_l = 2.2 * em; g_r = 6.5 * em; g_t = 1.4 * em; g_gx = 0.8 * em; g_gy = 1.5 * em
    g_b = 3.0 * em
    # square cells
    if (fixed_h) { h_in = grid_h((w_in - g_l - g_r - (g_nc - 1) * g_gx) / g_nc / n_heads * n_layers) }
} else {
    g_l = 4.5 * em; g_r = 9.0 * em; g_t = 5.0 * em; g_b = 3.6 * em
    g_gx = 2.0 * em; g_gy = 2.2 * em
}
load adir . "/terminal.gp"

set multiplot
if (!paper) {
    set label 99 "Mean recall per (layer, query head) over the decode steps" \
        at screen 0.5, 1 - 1.8 * em / h_in center font title_font
}
set label 98 "layer" at screen 0.6 * em / w_in, (py1(1) + py0(g_nr)) / 2 rotate center
set palette defined (0 "#08306b", 0.5 "#4292c6", 1 "#f7fbff")
set cbrange [c_lo : 1]
set cbtics font small_font
set cblabel "mean recall" font small_font offset (paper ? -0.8 : 0), 0
set colorbox user origin screen px1(g_nc) + 1.2 * em / w_in, py0(g_nr) \
    size screen 0.8 * em / w_in, py1(1) - py0(g_nr)
unset grid
set xrange [-0.5 : n_heads - 0.5]
set yrange [-0.5 : n_layers - 0.5]
# a head label every step_h heads while the digits fit the panel's width
step_h = ceil(n_heads * small_pt * 1.2 / (cw * 72))
step_h = step_h < 1 ? 1 : step_h
step_l = ceil(n_layers * small_pt * 1.4 / (ch * 72))
set xtics step_h scale 0 font small_font offset 0, (paper ? 0.4 : 0)
step_l = step_l < 1 ? 1 : step_l
set ytics step_l scale 0 font small_font
# values in the cells while a cell is big enough for "0.93" in the small font
show_values = cw * 72 / n_heads > small_pt * 2.4 && ch * 72 / n_layers > small_pt * 1.3
dark(v) = v < c_lo + 0.55 * (1.0 - c_lo)
do for [k = 1:n_panels] {
    r = int((k - 1) / g_nc) + 1
    c = (k - 1) % g_nc + 1
    call adir . "/panel.gp" r c
    bottom = k + g_nc > n_panels
    set format x (bottom ? "%g" : "")
    set format y (c == 1 ? "%g" : "")
    if (bottom) { set xlabel "query head" font small_font offset 0, (paper ? 1.0 : 0.5) } \
    else { unset xlabel }
    set label 97 pol[panel_pol[k]] at graph 0.5, graph 1 center offset 0, 0.5 font small_font
    f = sprintf("hr_p%d.dat", k)
    if (show_values) {
        plot f using 1:2:3 with image notitle, \
             f using 1:2:(sprintf("%.2f", $3)):(dark($3) ? 0xffffff : 0x000000) \
                 with labels tc rgb variable font small_font notitle
    } else {
        plot f using 1:2:3 with image notitle
    }
    unset label 99
    unset label 98
    unset colorbox
}
unset multiplot
