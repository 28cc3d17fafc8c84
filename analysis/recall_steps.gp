# recall_steps.gp - figure 1: attention-mass recall against decode step, one line per
# policy, one panel per budget (steps.tsv: step, recall; summary.tsv: budget).
#   gnuplot -e "dir='results/default'" analysis/recall_steps.gp
name = "recall_steps"
load (exists("adir") ? adir : "analysis") . "/common.gp"

steps = dir . "/steps.tsv"
call adir."/need.gp" steps "trace policy budget_spec step recall"

budgets = distinct(steps, "budget_spec", "trace=" . trace_rows)
n_b = words(budgets)
n_cols = n_b > 4 ? 2 : 1
n_rows = int((n_b + n_cols - 1) / n_cols)
where(p, b) = sprintf("trace=%s;policy=%s;budget_spec=%s", trace_rows, p, b)

# one recall scale for every panel, so panels compare at a glance
stats "< " . tsv(steps, "recall", "trace=" . trace_rows) using 1 nooutput
y_lo = floor(STATS_min * 10) / 10.0
set multiplot layout n_rows, n_cols margins 0.08, 0.80, 0.08, 0.90 spacing 0.08, 0.1 \
    title sprintf("Attention-mass recall per decode step (trace %s)", trace_rows) font title_font
set ylabel "recall (share of full-cache\nattention mass)"
set yrange [y_lo:1.02]
set autoscale xfix
unset key
do for [b = 1:n_b] {
    B = word(budgets, b)
    # byte budgets resolve to different tokens per policy: the panel title lists them
    panel = budget_label(B)
    if (is_bytes(B)) {
        panel = panel . "; B ="
        do for [i = 1:n_policies] {
            panel = panel . sprintf("%s %s %s", i > 1 ? "," : "", word(policies, i), \
                                    tokens_of(B, word(policies, i)))
        }
    }
    set title panel
    if (b > n_b - n_cols) { set xlabel "decode step t (token position)" } else { unset xlabel }
    plot for [i = 1:n_policies] "< " . tsv(steps, "step recall", where(word(policies, i), B)) \
        using 1:2 with lines ls i notitle
}
# The legend in a panel of its own on the right, tall enough for every policy.
set lmargin at screen 0.83
set rmargin at screen 0.99
set tmargin at screen 0.90
set bmargin at screen 0.08
unset title
unset xlabel
unset ylabel
unset border
unset tics
unset grid
set key at screen 0.99, 0.90 right top spacing 1.3 box opaque maxrows 40
plot for [i = 1:n_policies] NaN with lines ls i title word(policies, i)
unset multiplot
