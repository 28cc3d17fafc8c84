# memory_steps.gp - figure 2: KV-cache bytes against decode step per policy, at one
# budget, with each policy's metadata bytes as a dashed line of the same colour
# (steps.tsv: step, kv_bytes, meta_bytes).
#   gnuplot -e "dir='results/default'; budget='64'" analysis/memory_steps.gp
name = "memory_steps"
load (exists("adir") ? adir : "analysis") . "/common.gp"

steps = dir . "/steps.tsv"
call adir."/need.gp" steps "trace policy budget_spec step kv_bytes meta_bytes"

where(p) = sprintf("trace=%s;policy=%s;budget_spec=%s", trace_rows, word(policies, p), budget)
data(p, col) = sprintf("\"< %s\"", tsv(steps, "step " . col, where(p)))
# Policies that hold no metadata get no dashed line and no legend entry for one:
# meta_flags holds 1 or 0 per policy (one awk run each, asked once).
meta_flags = ""
do for [p = 1:n_policies] {
    meta_flags = meta_flags . (distinct(steps, "meta_bytes", where(p)) ne "\"0\"" ? "1 " : "0 ")
}
has_meta(p) = word(meta_flags, p) eq "1"

# The y range: every positive value, with room above and below on the log scale.
stats "< " . tsv_opts(steps, "kv_bytes", sprintf("trace=%s;budget_spec=%s", trace_rows, \
      budget), "") using 1 nooutput
y_hi = STATS_max / 1024.0
y_lo = STATS_min / 1024.0
do for [p = 1:n_policies] {
    if (has_meta(p)) {
        stats "< " . tsv(steps, "meta_bytes", where(p)) using 1 nooutput
        y_lo = (STATS_min > 0 && STATS_min / 1024.0 < y_lo) ? STATS_min / 1024.0 : y_lo
        y_hi = (STATS_max / 1024.0 > y_hi) ? STATS_max / 1024.0 : y_hi
    }
}

set title sprintf("KV-cache bytes (solid) and policy metadata bytes (dashed) per decode " \
                  . "step\n%s, trace %s", budget_label(budget), trace_rows) font title_font
set xlabel "decode step t (token position)"
set ylabel "bytes over all layers and KV heads (KiB, log scale)"
set logscale y 2
set yrange [y_lo / 1.6 : y_hi * 1.6]
set format y "%g"
set autoscale xfix
set key outside right top spacing 1.3 box opaque width 1
set lmargin 10

# Lines without legend entries, then markers every 25th step, shifted per policy so lines
# that lie on top of each other still show every policy's marker, then a NaN per entry so
# the legend shows line and marker together.
mark = 25
cmd = "plot "
do for [p = 1:n_policies] {
    cmd = cmd . sprintf("%s using 1:($2/1024) with lines ls %d dt 1 notitle, ", \
                        data(p, "kv_bytes"), p)
    cmd = cmd . sprintf("%s every %d::%d using 1:($2/1024) with points ls %d notitle, ", \
                        data(p, "kv_bytes"), mark, 3 * (p - 1), p)
    cmd = cmd . sprintf("NaN with linespoints ls %d dt 1 title \"%s KV\", ", p, \
                        policy_entry(word(policies, p), budget))
}
do for [p = 1:n_policies] {
    if (has_meta(p)) {
        cmd = cmd . sprintf("%s using 1:($2/1024) with lines ls %d dt 2 notitle, ", \
                            data(p, "meta_bytes"), p)
        cmd = cmd . sprintf("%s every %d::%d using 1:($2/1024) with points ls %d notitle, ", \
                            data(p, "meta_bytes"), mark, 3 * (p - 1), p)
        cmd = cmd . sprintf("NaN with linespoints ls %d dt 2 title \"%s metadata\", ", p, \
                            word(policies, p))
    }
}
eval cmd[1:strlen(cmd) - 2]
