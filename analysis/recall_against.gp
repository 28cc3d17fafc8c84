# recall_against.gp - the body shared by recall_budget.gp and recall_bytes.gp:
#   call adir."/recall_against.gp" PREFIX XLABEL TITLE
# plots PREFIX_pP.dat (x, mean, lo, hi) for every policy, with error bars.

if (!paper) { set title ARG3 font title_font }
set xlabel ARG2
set ylabel "mean recall"
set logscale x 2
set xrange [x_lo / 1.25 : x_hi * 1.25]
set format x "%g"
# a tick at every budget run while they are the same for all policies and few
if (n_xt > 0 && n_xt <= 10 && xt_val[1] > 0) {
    set xtics ()
    do for [i = 1:n_xt] { set xtics add (xt_lab[i] xt_val[i]) }
}
set yrange [y_lo : 1.02]
if (paper) {
    set key outside bottom center horizontal maxcols (columns == 2 ? 6 : 3) samplen 2 \
        spacing 0.9 width -1
} else {
    set key outside right top vertical spacing 1.2 box samplen 3
}
set errorbars 1.0 dt solid lw 1
set bars small
# points of one x spread a little sideways so their bars stay apart
shift(p) = 1.0 + 0.02 * (p - (n_pol + 1) / 2.0)
plot for [p = 1:n_pol] sprintf("%s_p%d.dat", ARG1, p) using ($1 * shift(p)):2:3:4 \
    with yerrorlines lt p ps 0.6 title pol[p]
