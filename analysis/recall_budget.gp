# recall_budget.gp - figure 3: mean recall against budget, one line per policy, with
# 95% confidence intervals as error bars (summary.tsv: budget, recall_mean,
# recall_ci_lo, recall_ci_hi). With several traces and no trace named it shows trace
# "all": the mean over traces with a Student-t interval across them; otherwise one
# trace with the bootstrap interval over (layer, query head) units.
#   gnuplot -e "dir='results/default'" analysis/recall_budget.gp
name = "recall_budget"
load (exists("adir") ? adir : "analysis") . "/common.gp"

call adir."/need.gp" summary "trace policy budget budget_spec recall_mean recall_ci_lo recall_ci_hi ci_units"

shown = (!trace_given && has_trace("all")) ? "all" : trace
n_units = first(summary, "ci_units", "trace=" . shown)
how = shown eq "all" ? sprintf("mean over %s traces, 95%% Student-t interval across them", \
                               n_units) \
                     : sprintf("trace %s, 95%% bootstrap interval over %s (layer, query " \
                               . "head) units", shown, n_units)
where(p) = sprintf("trace=%s;policy=%s", shown, word(policies, p))

stats "< " . tsv(summary, "budget", "trace=" . shown) using 1 nooutput
b_lo = STATS_min
b_hi = STATS_max
# Recall lies in [0, 1]: the axis stops there even when an interval (a t-interval over
# two or three traces, say) reaches beyond.
stats "< " . tsv(summary, "recall_ci_lo", "trace=" . shown) using 1 nooutput
y_lo = floor((STATS_min - 0.01) * 20) / 20.0
y_lo = y_lo < 0 ? 0 : y_lo

set title sprintf("Mean attention-mass recall against budget\n%s", how) font title_font
set xlabel "budget B (tokens per cache, log scale)"
set ylabel "mean recall (share of full-cache attention mass)"
set logscale x 2
set xrange [b_lo / 1.25 : b_hi * 1.25]
# A tick at every budget run (while they are few enough to read).
budget_values = system(tsv(summary, "budget", "trace=" . shown) . " | sort -gu")
if (words(budget_values) <= 12) {
    set xtics ()
    do for [i = 1:words(budget_values)] {
        set xtics add (word(budget_values, i) real(word(budget_values, i)))
    }
}
set yrange [y_lo : 1.03]
set key outside right top spacing 1.3 box opaque width 1
set errorbars 1.5 dt solid lw 1.6
set lmargin 10
# Policies at one budget are spread a little sideways so their error bars do not overlap.
shift(p) = 1.0 + 0.018 * (p - (n_policies + 1) / 2.0)
# Sorted by budget: byte budgets give each policy its own tokens, out of spec order.
plot for [p = 1:n_policies] "< " . tsv(summary, "budget recall_mean recall_ci_lo recall_ci_hi", \
                                       where(p)) . " | sort -g" \
         using ($1 * shift(p)):2:3:4 with yerrorlines ls p title word(policies, p)
