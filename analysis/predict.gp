# predict.gp - figure 6: does an open-loop metric predict what the cache does to the
# model's output? Left: open-loop recall (x) against the closed loop's KL from the
# full-cache model (y, log scale); right: open-loop output error (x) against the same KL.
# One point per (policy, budget), one colour per policy (summary.tsv: recall_mean,
# out_err_mean, kl_mean). With several traces and no trace named it shows trace "all"
# (means over traces). Points with kl_mean 0 (nothing evicted: full, or a budget that
# keeps everything) cannot sit on a log axis and are left out; without closed-loop
# results (kvsim run without --model) the figure says so.
#   gnuplot -e "dir='results/default'" analysis/predict.gp
name = "predict"
load (exists("adir") ? adir : "analysis") . "/common.gp"

call adir."/need.gp" summary "trace policy budget_spec recall_mean out_err_mean kl_mean"

shown = (!trace_given && has_trace("all")) ? "all" : trace
where(p) = sprintf("trace=%s;policy=%s", shown, word(policies, p))
# kl_mean values > 0 (NA rows print nothing numeric: awk's +0 of "NA" is 0)
n_kl = int(system(tsv(summary, "kl_mean", "trace=" . shown) . \
                  " | awk '$1 != \"NA\" && $1 + 0 > 0' | wc -l"))
has_err = int(system(tsv(summary, "out_err_mean", "trace=" . shown) . \
                     " | awk '$1 != \"NA\"' | wc -l")) > 0
what = shown eq "all" ? "means over the traces" : sprintf("trace %s", shown)

if (n_kl == 0) {
    set title "Open-loop metrics against the closed loop's KL\n" \
              . "no closed-loop results: run kvsim run with --model CHECKPOINT" font title_font
    unset border
    unset tics
    set xrange [0:1]
    set yrange [0:1]
    plot 2 notitle
    exit
}

positive(y) = (y > 0 ? y : NaN)
stats "< " . tsv(summary, "kl_mean", "trace=" . shown) . " | awk '$1 != \"NA\" && $1 + 0 > 0'" \
    using 1 nooutput
y_lo = 10 ** floor(log10(STATS_min))
y_hi = 10 ** ceil(log10(STATS_max))

set multiplot layout 1, 2 title sprintf("Which offline metric predicts the output? " \
    . "One point per (policy, budget), %s", what) font title_font
set logscale y
set yrange [y_lo : y_hi]
set format y "%.0e"
set ylabel "closed-loop KL(full || policy), nats per token (log scale)"
# points run from top left to bottom right (recall) or bottom left to top right
# (out_err): the key sits in the empty corner of the first panel
set key inside bottom left spacing 1.1 box opaque width 1 font small_font

set xlabel "open-loop attention-mass recall (higher keeps more)"
set xrange [0 : 1.02]
plot for [p = 1:n_policies] "< " . tsv(summary, "recall_mean kl_mean", where(p)) \
         using 1:(positive($2)) with points ls p title word(policies, p)

set xlabel "open-loop output error, relative L2 (lower is closer)"
unset key
if (has_err) {
    set autoscale x
    set xrange [0 : *]
    plot for [p = 1:n_policies] "< " . tsv(summary, "out_err_mean kl_mean", where(p)) \
             using 1:(positive($2)) with points ls p
} else {
    set label 1 "no output error: the trace has no v" at graph 0.5, 0.5 center
    plot positive(-1) notitle
}
unset multiplot
