# common.gp - what every kvsim figure script loads first: the variables, the terminal,
# the policy styles and the TSV helpers. A script sets `name` (the figure's file name)
# and then: load adir."/common.gp"
#
# Variables (gnuplot -e "dir='results/default'; ..." SCRIPT; kvsim plot sets them):
#   dir     result directory (required)
#   adir    this directory (default "analysis")
#   fmt     png (pngcairo 1200x800, the default), svg or pdf
#   width, height   pixels (default 1200 and 800; pdf: 9 x 6 inches at the default)
#   out     output file (default dir/figures/NAME.fmt)
#   trace   trace name of the per-trace figures (default: the first in summary.tsv)
#   budget  budget_spec of the one-budget figures (default: the first in summary.tsv)
#
# Columns are selected by name through tsv.awk; `call adir."/need.gp" FILE "COLS"` stops
# the script (non-zero exit, "FILE: no column 'X'") when a needed column is missing.

if (!exists("dir")) {
    exit error "no result directory: run gnuplot -e \"dir='results/default'\" SCRIPT"
}
if (!exists("adir")) { adir = "analysis" }
if (!exists("fmt")) { fmt = "png" }
if (!exists("out")) {
    system(sprintf("mkdir -p '%s/figures'", dir))
    out = sprintf("%s/figures/%s.%s", dir, name, fmt)
}

# ---------------------------------------------------------------- TSV by column name

# Shell command printing columns `cols` of the rows of `file` matching `where`
# ("col=value;col=value"); opts: more awk -v settings (tsv.awk).
tsv_opts(file, cols, where, opts) = \
    sprintf("awk -f '%s/tsv.awk' %s -v cols='%s' -v where='%s' '%s'", \
            adir, opts, cols, where, file)
tsv(file, cols, where) = tsv_opts(file, cols, where, "")
# The distinct values, as a gnuplot word list ("a" "b c" ...), in order of appearance.
distinct(file, col, where) = system(tsv_opts(file, col, where, "-v distinct=1"))
# The first value (unquoted), or "" when no row matches.
first(file, col, where) = system(tsv(file, col, where) . " | head -n 1")

# ---------------------------------------------------------------- trace and budget

summary = dir . "/summary.tsv"
call adir."/need.gp" summary "trace policy type budget budget_spec"
traces_all = distinct(summary, "trace", "")
if (!exists("trace")) {
    trace = word(traces_all, 1)
    trace_given = 0
} else {
    trace_given = 1
}
has_trace(t) = strstrt(traces_all, sprintf("\"%s\"", t)) > 0
if (!has_trace(trace)) {
    exit error sprintf("%s: no trace '%s' (has: %s)", summary, trace, traces_all)
}
# Per-trace figures need one real trace; "all" only aggregates summary and compare.
if (trace eq "all") { trace_rows = word(traces_all, 1) } else { trace_rows = trace }
budgets_all = distinct(summary, "budget_spec", "trace=" . trace)
if (!exists("budget")) { budget = word(budgets_all, 1) }
if (strstrt(budgets_all, sprintf("\"%s\"", budget)) == 0) {
    exit error sprintf("%s: no budget_spec '%s' (has: %s)", summary, budget, budgets_all)
}
policies = distinct(summary, "policy", "trace=" . trace)
n_policies = words(policies)

# Budget specs: "64" (tokens), "0.25p" (share of the prompt: the same tokens for every
# policy of a trace), "64KiB" (bytes: tokens differ per policy, so legends name them).
all_digits(s) = strlen(s) == 0 ? 1 : (strstrt("0123456789", s[1:1]) > 0 && all_digits(s[2:]))
is_tokens(s) = strlen(s) > 0 && all_digits(s)
is_bytes(s) = strlen(s) > 0 && s[strlen(s):strlen(s)] eq "B"
tokens_of(s, p) = first(summary, "budget", sprintf("trace=%s;budget_spec=%s;policy=%s", \
                                                    trace_rows, s, p))
budget_label(s) = is_tokens(s) ? sprintf("B = %s tokens", s) : \
                  is_bytes(s) ? sprintf("budget %s of KV cache + metadata", s) : \
                  sprintf("budget %s = %s tokens", s, tokens_of(s, word(policies, 1)))
policy_entry(p, s) = is_bytes(s) ? sprintf("%s (B = %s)", p, tokens_of(s, p)) : p

# ---------------------------------------------------------------- terminal

if (!exists("width")) { width = 1200 }
if (!exists("height")) { height = 800 }
# Text is not "enhanced": trace and policy names hold underscores, which enhanced text
# would turn into subscripts.
# Text shrinks a little with the picture, less than the picture does.
font_pt = (fmt eq "pdf" ? 10.0 : 11.0) * sqrt(width / 1200.0)
font_spec = sprintf("DejaVu Sans,%.1f", font_pt)
title_font = sprintf(",%.1f", font_pt * 14 / 11)    # figure titles
small_font = sprintf(",%.1f", font_pt * 8 / 11)     # values written into cells
if (fmt eq "png") {
    set terminal pngcairo size width, height noenhanced font font_spec linewidth 1.2
} else {
    if (fmt eq "svg") {
        set terminal svg size width, height noenhanced font font_spec background "white"
    } else {
        if (fmt eq "pdf") {
            set terminal pdfcairo size 9.0 * width / 1200, 6.0 * height / 800 noenhanced \
                font font_spec
        } else {
            exit error sprintf("fmt must be png, svg or pdf, got '%s'", fmt)
        }
    }
}
set output out
set datafile separator "\t"
set encoding utf8

# ---------------------------------------------------------------- policy styles
# Policy i (its order in summary.tsv) keeps one colour, dash pattern and point type in
# every figure: Okabe-Ito colours, which stay apart for colour-blind readers, and dash
# patterns from the fourth on, so lines that lie on top of each other stay visible.
set linetype 1 lc rgb "#0072B2" lw 2 dt 1 pt 7 ps 1.1
set linetype 2 lc rgb "#D55E00" lw 2 dt 1 pt 5 ps 1.0
set linetype 3 lc rgb "#009E73" lw 2 dt 1 pt 9 ps 1.3
set linetype 4 lc rgb "#CC79A7" lw 2 dt 2 pt 11 ps 1.3
set linetype 5 lc rgb "#E69F00" lw 2 dt 1 pt 13 ps 1.3
set linetype 6 lc rgb "#56B4E9" lw 2 dt 4 pt 15 ps 1.2
set linetype 7 lc rgb "#000000" lw 2 dt 3 pt 3 ps 1.1
set linetype 8 lc rgb "#999999" lw 2 dt 5 pt 1 ps 1.1
# Beyond eight policies (the default experiment runs twelve): more colours, so no two
# policies share a colour until the thirteenth.
set linetype 9 lc rgb "#882255" lw 2 dt 1 pt 2 ps 1.1
set linetype 10 lc rgb "#44AA99" lw 2 dt 2 pt 4 ps 1.0
set linetype 11 lc rgb "#332288" lw 2 dt 1 pt 6 ps 1.1
set linetype 12 lc rgb "#999933" lw 2 dt 4 pt 8 ps 1.1
set linetype cycle 12

set grid lc rgb "#dddddd" lw 1
set border lc rgb "#444444"
set tics nomirror
set key noautotitle
