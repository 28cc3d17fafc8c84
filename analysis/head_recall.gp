# head_recall.gp - figure 5: mean recall of every (layer, query head), a heatmap per
# policy, at one budget, on one colour scale (heads.tsv: layer, head, recall_mean).
#   gnuplot -e "dir='results/default'; budget='64'" analysis/head_recall.gp
name = "head_recall"
load (exists("adir") ? adir : "analysis") . "/common.gp"

heads = dir . "/heads.tsv"
call adir."/need.gp" heads "trace policy budget_spec layer head recall_mean"

sel = sprintf("trace=%s;budget_spec=%s", trace_rows, budget)
where(p) = sel . ";policy=" . word(policies, p)
stats "< " . tsv(heads, "layer head recall_mean", sel) using 1:2 nooutput
n_layers = int(STATS_max_x) + 1
n_heads = int(STATS_max_y) + 1
stats "< " . tsv(heads, "recall_mean", sel) using 1 nooutput
c_lo = floor(STATS_min * 10) / 10.0

n_cols = n_policies > 4 ? 3 : (n_policies > 1 ? 2 : 1)
n_rows = int((n_policies + n_cols - 1) / n_cols)
panel(p) = policy_entry(word(policies, p), budget)
# Values are written into the cells while they stay legible.
show_values = n_layers * n_heads <= 64
dark(v) = v < c_lo + 0.55 * (1.0 - c_lo)

set multiplot layout n_rows, n_cols margins 0.07, 0.88, 0.08, 0.86 spacing 0.06, 0.12 \
    title sprintf("Mean recall per (layer, query head) over the decode steps\n%s, " \
                  . "trace %s", budget_label(budget), trace_rows) font title_font
set palette defined (0 "#08306b", 0.5 "#4292c6", 1 "#f7fbff")
set cbrange [c_lo : 1]
set cblabel "mean recall"
set colorbox user origin screen 0.91, 0.2 size screen 0.02, 0.55
unset grid
set xrange [-0.5 : n_heads - 0.5]
set yrange [-0.5 : n_layers - 0.5]
set xtics 1 scale 0
set ytics 1 scale 0
set label 1 "layer" at screen 0.02, 0.48 rotate by 90 center
do for [p = 1:n_policies] {
    set title panel(p)
    if (p > n_policies - n_cols) { set xlabel "query head" } else { unset xlabel }
    data = "< " . tsv(heads, "head layer recall_mean", where(p))
    if (show_values) {
        plot data using 1:2:3 with image notitle, \
             data using 1:2:(sprintf("%.2f", $3)):(dark($3) ? 0xffffff : 0x000000) \
                 with labels tc rgb variable font small_font notitle
    } else {
        plot data using 1:2:3 with image notitle
    }
    unset label 1
    unset colorbox
}
unset multiplot
