# head_recall.gp - mean recall of every (layer, query head), a heatmap per policy (full
# left out: recall 1 everywhere), at one budget, on one colour scale.
# Data (kvsim plot): hr_pK.dat = head, layer, recall_mean of panel K (policy
# panel_pol[K], K = 1..n_panels); n_layers, n_heads, c_lo.

n_cols_s = n_panels > 4 ? 3 : (n_panels > 1 ? 2 : 1)
n_cols_p = columns == 2 ? (n_panels > 4 ? 4 : n_panels) : (n_panels > 2 ? 3 : n_panels)
n_rows_p = ceil(n_panels / real(n_cols_p))
cell_in = (columns == 2 ? 6.2 : 2.9) / n_cols_p / n_heads
paper_h1 = 0.45 + n_rows_p * (n_layers * cell_in + 0.3)
paper_h2 = 0.45 + n_rows_p * (n_layers * cell_in + 0.3)
load adir . "/common.gp"

n_cols = paper ? n_cols_p : n_cols_s
n_rows = int((n_panels + n_cols - 1) / n_cols)
if (paper) {
    area_l = 0.3 / w_in; area_r = 1 - 0.55 / w_in; area_b = 0.35 / h_in; area_t = 0.99
} else {
    area_l = 0.07; area_r = 0.88; area_b = 0.08; area_t = 0.88
}
set multiplot layout n_rows, n_cols margins area_l, area_r, area_b, area_t \
    spacing (paper ? 0.03 : 0.05), (paper ? 0.3 / h_in : 0.1)
if (!paper) {
    set label 99 "Mean recall per (layer, query head) over the decode steps" \
        at screen 0.47, 0.96 center font title_font
}
set palette defined (0 "#08306b", 0.5 "#4292c6", 1 "#f7fbff")
set cbrange [c_lo : 1]
set cbtics font small_font
set colorbox user origin screen area_r + 0.02, area_b + 0.1 size screen 0.02, \
    (area_t - area_b) * 0.6
unset grid
set xrange [-0.5 : n_heads - 0.5]
set yrange [-0.5 : n_layers - 0.5]
set xtics 1 scale 0 font small_font
set ytics 1 scale 0 font small_font
# values in the cells while a cell is big enough for "0.93" in the small font
panel_w_pt = (area_r - area_l) * w_in * 72 / n_cols
cell_pt = panel_w_pt / n_heads
show_values = cell_pt > small_pt * 2.6 && n_layers * n_heads <= 64
dark(v) = v < c_lo + 0.55 * (1.0 - c_lo)
set label 98 "layer" at screen area_l * 0.35, (area_b + area_t) / 2 rotate center
do for [k = 1:n_panels] {
    set title pol[panel_pol[k]] font small_font offset 0, -0.5
    if (k > n_panels - n_cols) { set xlabel "query head" font small_font offset 0, 0.5 } \
    else { unset xlabel }
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
