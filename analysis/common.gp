# common.gp - loaded by every figure script after it has set paper_h1 and paper_h2 (the
# figure's height in inches at one and at two columns, paper style): the terminal, the
# fonts and the shared look. kvsim plot runs each figure as
#     gnuplot vars.gp analysis/NAME.gp
# in a private directory holding vars.gp (the variables below, written by kvsim) and the
# figure's data files (analysis/README.md lists them); the figure goes to figure.FMT there.
#
# vars.gp: adir (this directory), name, fmt (png, svg, pdf), style (screen, paper),
#   columns (1, 2), req_w, req_h (a requested size: pixels for png, inches otherwise; 0:
#   the style's default), smooth, raw, n_pol, pol[p] (policy labels), pol_pt[p], the
#   linetypes 1..n_pol (one per policy: colour, dash, point) and n_pol + 1 (several
#   policies at once), budget, n_used; then the figure's own variables.
#
# Names are shown as they are: every terminal is "noenhanced", so no character of a
# trace or policy name is read as markup.

paper = style eq "paper"
if (paper) {
    w_in = req_w > 0 ? req_w : (columns == 2 ? 7.0 : 3.4)
    h_in = req_h > 0 ? req_h : (columns == 2 ? paper_h2 : paper_h1)
    font_pt = 8.0
    dpi = 200.0                 # png at print size
} else {
    w_in = req_w > 0 && fmt ne "png" ? req_w : 9.0
    h_in = req_h > 0 && fmt ne "png" ? req_h : 6.0
    dpi = fmt eq "png" ? 1200.0 / 9.0 : 72.0
    w_px = req_w > 0 && fmt eq "png" ? req_w : 1200
    h_px = req_h > 0 && fmt eq "png" ? req_h : 800
    font_pt = fmt eq "png" ? 11.0 * sqrt(w_px / 1200.0) : 10.0 * sqrt(w_in / 9.0)
}
small_pt = font_pt * 0.85
title_pt = font_pt * 1.25
if (fmt eq "png") {
    if (paper) {
        # pngcairo sizes fonts and lines for 72 dots per inch: scale both up to dpi
        w_px = int(w_in * dpi)
        h_px = int(h_in * dpi)
        scale = dpi / 72.0
    } else {
        scale = 1.0
    }
    set terminal pngcairo size w_px, h_px noenhanced font sprintf("DejaVu Sans,%.1f", \
        font_pt * scale) linewidth scale
} else {
    scale = 1.0
    if (fmt eq "svg") {
        # one SVG unit per point, so font sizes read as points
        set terminal svg size w_in * 72, h_in * 72 noenhanced font sprintf("DejaVu Sans,%.1f", \
            font_pt) background "white"
    } else {
        set terminal pdfcairo size w_in, h_in noenhanced font sprintf("DejaVu Sans,%.1f", \
            font_pt)
    }
}
set output "figure." . fmt
set encoding utf8
small_font = sprintf(",%.1f", small_pt * scale)
title_font = sprintf(",%.1f", title_pt * scale)

set grid lc rgb "#e0e0e0" lw 1
set border lc rgb "#444444" lw 0.8
set tics nomirror scale 0.6
set key noautotitle
# ytics and labels close to the axis in print
if (paper) { set xtics offset 0, 0.3; set xlabel offset 0, 0.6; set ylabel offset 1.5, 0 }

