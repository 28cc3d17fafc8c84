# key.gp - makes the next plot of a multiplot the legend alone, outside the panels: a
# strip key_h inches tall under them (paper, or key_below = 1) or a column right of them. The
# caller then plots one NaN per entry, with its title.
unset title; unset xlabel; unset ylabel; unset border; unset tics; unset grid
unset label; unset arrow; unset logscale
set xrange [0:1]; set yrange [0:1]
if (paper || (exists("key_below") && key_below)) {
    set lmargin at screen 0.04; set rmargin at screen 1.0   # room for the first column's samples
    set tmargin at screen key_h / h_in; set bmargin at screen 0.0
    set key inside center top vertical maxrows key_rows Left reverse samplen 1.3 \
        spacing 1.0 width 0 nobox
} else {
    set lmargin at screen px1(g_nc) + 1.5 * em / w_in; set rmargin at screen 0.995
    set tmargin at screen py1(1); set bmargin at screen py0(g_nr)
    set key inside left top vertical Left reverse samplen 2.5 spacing 1.2 box width 1
}
