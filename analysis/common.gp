# common.gp - loaded first by every figure script: sizes, the font, and the panel grid.
# The script then sets h_in for paper style (its height, from the grid it needs) and
# loads terminal.gp. kvsim plot runs each figure as
#     gnuplot vars.gp analysis/NAME.gp
# in a private directory holding vars.gp (the variables below, written by kvsim) and the
# figure's data files (analysis/README.md lists them); the figure goes to figure.FMT there.
#
# vars.gp: adir (this directory), name, fmt (png, svg, pdf), style (screen, paper),
#   columns (1, 2), req_w, req_h (a requested size: pixels for png, inches otherwise; 0:
#   the style's default), smooth, raw, n_pol, pol[p] (policy labels), pol_pt[p], the
#   linetypes 1..n_pol (one per policy: colour, dash, point), n_pol + 1 (several policies
#   of different types at once) and n_pol + 2 (an invisible sample), budget, n_used,
#   label_chars (the longest label); then the figure's own variables.
#
# Names are shown as they are: every terminal is "noenhanced", so no character of a
# trace or policy name is read as markup.

paper = style eq "paper"
# Sizes in inches. A screen PNG is 1200x800 pixels by default, taken as 9x6 in at 133 dpi.
if (paper) {
    w_in = req_w > 0 ? req_w : (columns == 2 ? 7.0 : 3.4)
    h_in = req_h > 0 ? req_h : 0       # 0: the figure sets it
    font_pt = 8.5
    dpi = 200.0
} else {
    dpi = fmt eq "png" ? 1200.0 / 9.0 : 72.0
    w_in = req_w > 0 ? (fmt eq "png" ? req_w / dpi : req_w) : 9.0
    h_in = req_h > 0 ? (fmt eq "png" ? req_h / dpi : req_h) : 6.0
    font_pt = 11.0 * (w_in / 9.0) ** 0.3
}
# print text stays at 8 pt or more, panel headings and tick labels included
small_pt = paper ? 8.0 : font_pt * 0.9
title_pt = font_pt * 1.2
em = font_pt / 72.0                    # the font's height, in inches
fixed_h = paper && req_h == 0          # the figure chooses the height

# The panel grid: g_nr rows and g_nc columns inside paddings g_l, g_r, g_t, g_b and gaps
# g_gx, g_gy (inches, set by the script); grid_h(cell) is the height that gives cells
# `cell` inches tall. terminal.gp computes the cells' size cw x ch; panel (r, c) then
# spans px0(c)..px1(c), py0(r)..py1(r) in screen coordinates (panel.gp puts a plot there).
grid_h(cell) = g_t + g_b + g_nr * cell + (g_nr - 1) * g_gy
px0(c) = (g_l + (c - 1) * (cw + g_gx)) / w_in
px1(c) = px0(c) + cw / w_in
py1(r) = 1 - (g_t + (r - 1) * (ch + g_gy)) / h_in
py0(r) = py1(r) - ch / h_in
# a legend entry's width for labels of `chars` characters, in inches
key_w(chars) = (chars * 0.52 + 2.8) * em
# the legend outside the panels: key_cols columns, key_rows rows, key_h inches tall,
# for n_keys entries of up to `chars` characters across width `room` inches
key_layout(n_keys, room, chars) = (key_cols = floor(room / key_w(chars)), \
    key_cols = key_cols < 1 ? 1 : (key_cols > n_keys ? n_keys : key_cols), \
    key_rows = ceil(n_keys / real(key_cols)), key_h = key_rows * 1.3 * em + 0.6 * em)
