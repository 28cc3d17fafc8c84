# retention_text.gp - what each policy kept, as text: the trace's text laid out as a
# paragraph, each token shaded by the share of (layer, KV head) caches still holding it at
# the end of the trace, one panel per policy (up to four, references left out), at one
# budget. The prompt is grey, the generated text black.
# Data (kvsim plot): rt_pK.dat = box centre x, line, half width, fraction, label x,
# colour, token index, one row per token of panel K (K = 1..n_panels, policy
# panel_pol[K]); tok[i] (the token texts, string constants), T, P, cols (characters per
# line), n_lines, has_text (0: token ids shown instead of text).
load adir . "/common.gp"

g_nc = 1
g_nr = n_panels
if (paper) {
    g_l = 0.4 * em; g_r = 0.4 * em; g_t = 1.4 * em; g_gx = 0; g_gy = 1.6 * em
    g_b = 0.4 * em
    if (fixed_h) { h_in = grid_h((n_lines + 1) * 0.11) }
} else {
    g_l = 1.0 * em; g_r = 1.0 * em; g_t = 5.0 * em; g_b = 0.8 * em
    g_gx = 0; g_gy = 2.0 * em
}
load adir . "/terminal.gp"

# The grid of characters matches the monospaced font: DejaVu Sans Mono advances 0.602 em
# per character; a screen PNG draws a point at 4/3 pixels of 1/dpi inch, everything else
# at 1/72 inch (terminal.gp). The font is as large as the panel's width and height allow,
# a line 1.25 em high.
in_per_pt = (fmt eq "png" && !paper) ? 4.0 / 3.0 / dpi : 1.0 / 72
by_width = cw / (cols + 1) / 0.602 / in_per_pt
by_height = ch / (n_lines + 0.5) / 1.25 / in_per_pt
char_pt = by_width < by_height ? by_width : by_height
char_font = sprintf("DejaVu Sans Mono,%.2f", char_pt * f_scale)

set multiplot
if (!paper) {
    set label 99 sprintf("What each policy kept: share of (layer, KV head) caches still " \
        . "holding each token at the end\nprompt (P = %d) in grey%s", P, \
        has_text ? "" : "; token ids (the trace has no text)") \
        at screen 0.5, 1 - 1.6 * em / h_in center font title_font
}
# light enough at 1 that black text stays readable on it
set palette defined (0 "#ffffff", 0.5 "#c6dbef", 1 "#6baed6")
set cbrange [0:1]
unset colorbox
unset border
unset xtics
unset ytics
unset grid
set xrange [-0.5 : cols + 0.5]
set yrange [n_lines - 0.5 : -0.5]
set style fill solid noborder
do for [k = 1:n_panels] {
    call adir . "/panel.gp" k 1
    set label 97 pol[panel_pol[k]] at graph 0.5, graph 1 center offset 0, 0.6 font small_font
    plot sprintf("rt_p%d.dat", k) using 1:2:3:(0.5):4 with boxxyerror lc palette notitle, \
         '' using ($5 - 0.5):2:(tok[int($7)]):6 with labels left font char_font \
             tc rgb variable notitle
    unset label 99
}
unset multiplot
