# retention_map.gp - figure 4: which positions every (layer, KV head) cache still holds at
# the end of the trace, one panel per policy, at one budget (retention_map.tsv: layer,
# kv_head, position, held; steps.tsv for the prompt length P and the length T).
#   gnuplot -e "dir='results/default'; budget='64'" analysis/retention_map.gp
name = "retention_map"
load (exists("adir") ? adir : "analysis") . "/common.gp"

map = dir . "/retention_map.tsv"
steps = dir . "/steps.tsv"
call adir."/need.gp" map "trace policy budget_spec layer kv_head position held"
call adir."/need.gp" steps "trace budget_spec step"

sel = sprintf("trace=%s;budget_spec=%s", trace_rows, budget)
where(p) = sel . ";policy=" . word(policies, p)
stats "< " . tsv(steps, "step", sel) using 1 nooutput
P = int(STATS_min)
T = int(STATS_max) + 1
stats "< " . tsv(map, "layer kv_head", sel) using 1:2 nooutput
n_layers = int(STATS_max_x) + 1
n_kv = int(STATS_max_y) + 1
n_rows_y = n_layers * n_kv

n_cols = n_policies > 3 ? 2 : 1
n_rows = int((n_policies + n_cols - 1) / n_cols)
panel(p) = policy_entry(word(policies, p), budget)

set multiplot layout n_rows, n_cols margins 0.07, 0.98, 0.09, 0.86 spacing 0.06, 0.11 \
    title sprintf("Positions still cached at the end of the trace (dark), per layer and " \
                  . "KV head\n%s, trace %s; dashed line: end of the prompt (P = %d)", \
                  budget_label(budget), trace_rows, P) font title_font
set palette defined (0 "#ffffff", 1 "#08306b")
set cbrange [0:1]
unset colorbox
unset grid
set xrange [-0.5 : T - 0.5]
set yrange [-0.5 : n_rows_y - 0.5]
# One tick per layer (at most about 12 labels), grey lines between layers.
layer_step = n_layers > 12 ? int((n_layers + 11) / 12) : 1
set ytics () nomirror
do for [l = 0:n_layers - 1:layer_step] {
    set ytics add (sprintf("L%d", l) l * n_kv + (n_kv - 1) / 2.0)
}
set ytics scale 0
do for [l = 1:n_layers - 1] {
    set arrow from graph 0, first l * n_kv - 0.5 to graph 1, first l * n_kv - 0.5 \
        nohead lc rgb "#bbbbbb" lw 1 front
}
set arrow from first P - 0.5, graph 0 to first P - 0.5, graph 1 nohead dt 2 \
    lc rgb "#D55E00" lw 1.5 front
set style fill solid noborder
set label 1 sprintf("layer (L) x KV head, %d KV heads per layer", n_kv) at screen 0.015, 0.47 \
    rotate by 90 center
do for [p = 1:n_policies] {
    set title panel(p)
    if (p > n_policies - n_cols) { set xlabel "position j (token)" } else { unset xlabel }
    # boxes a little wider than a position, so neighbours overlap instead of leaving
    # anti-aliased seams
    plot "< " . tsv(map, "position layer kv_head held", where(p)) \
        using 1:($2 * n_kv + $3):(0.75):(0.5):4 with boxxyerror lc palette notitle
    unset label 1
}
unset multiplot
