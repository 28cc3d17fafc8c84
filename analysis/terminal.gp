# terminal.gp - loaded by every figure script once w_in and h_in are final: the terminal
# and the shared look. Cairo draws a font of N points at N * 4/3 units (it assumes 96
# units per inch where gnuplot assumes 72) and pdfcairo halves fonts by default: the
# scales below make an 8 pt font 8 pt in the PDF and in a paper-style PNG printed at its
# width in inches (200 dpi).
if (fmt eq "png") {
    w_px = int(w_in * dpi + 0.5)
    h_px = int(h_in * dpi + 0.5)
    scale = paper ? dpi / 96.0 : 1.0
    set terminal pngcairo size w_px, h_px noenhanced font sprintf("DejaVu Sans,%.1f", \
        font_pt * (paper ? scale : 1.0)) linewidth scale
} else {
    scale = 1.0
    if (fmt eq "svg") {
        # one SVG unit per point
        set terminal svg size w_in * 72, h_in * 72 noenhanced \
            font sprintf("DejaVu Sans,%.1f", font_pt) background "white"
    } else {
        set terminal pdfcairo size w_in, h_in noenhanced \
            font sprintf("DejaVu Sans,%.1f", font_pt) fontscale 0.75 linewidth 0.75
    }
}
set output "figure." . fmt
if (exists("g_nc")) {
    cw = (w_in - g_l - g_r - (g_nc - 1) * g_gx) / g_nc
    ch = (h_in - g_t - g_b - (g_nr - 1) * g_gy) / g_nr
}
set encoding utf8
f_scale = fmt eq "png" && paper ? scale : 1.0
small_font = sprintf(",%.1f", small_pt * f_scale)
title_font = sprintf(",%.1f", title_pt * f_scale)
set grid lc rgb "#e0e0e0" lw 1
set border lc rgb "#444444" lw 0.8
set tics nomirror scale 0.6
set key noautotitle
