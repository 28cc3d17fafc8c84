# retention_text.gp - figure 6: what each policy kept, as text. The trace's tokens laid out
# as a paragraph, each shaded by the share of caches (layers x KV heads) that still hold it
# at the end of the trace, one panel per policy at one budget (retention.tsv: position,
# fraction, token; steps.tsv for the prompt length P). The prompt's tokens are written in
# grey, the generated ones in black; a newline token starts a new line. Shown for at most
# four policies, the references (full, oracle, lookahead) left out. A trace captured
# without a tokenizer shows its token ids (#id) instead of text.
#   gnuplot -e "dir='results/default'; budget='48'" analysis/retention_text.gp
name = "retention_text"
load (exists("adir") ? adir : "analysis") . "/common.gp"

ret = dir . "/retention.tsv"
steps = dir . "/steps.tsv"
call adir."/need.gp" ret "trace policy budget_spec position fraction token"
call adir."/need.gp" steps "trace budget_spec step"

sel = sprintf("trace=%s;budget_spec=%s", trace_rows, budget)
where(p) = sel . ";policy=" . p
stats "< " . tsv(steps, "step", sel) using 1 nooutput
P = int(STATS_min)

# The policies shown: up to four that are not references.
is_reference(p) = strstrt(" full oracle lookahead ", " " . \
                  first(summary, "type", sprintf("trace=%s;policy=%s", trace_rows, p)) . " ") > 0
shown = ""
do for [i = 1:n_policies] {
    if (!is_reference(word(policies, i)) && words(shown) < 4) {
        shown = shown . sprintf(" \"%s\"", word(policies, i))
    }
}
n_shown = words(shown)
if (n_shown == 0) { exit error sprintf("%s: no policy to show (only references)", ret) }

# The texts and, per panel, the fractions, by position.
set datafile separator "\t"
stats "< " . tsv(ret, "position", where(word(shown, 1))) using 1 nooutput
T = int(STATS_max) + 1
array TXT[T]
array FRAC[T]
# Whole lines, split at the tab here: gnuplot trims the spaces around a field, and a
# token's leading space is part of its text. gnuplot also reads a double quote in data as
# a string delimiter, so quotes become U+201D on the way in.
set datafile separator "\001"
stats "< " . tsv(ret, "position token", where(word(shown, 1))) . " | sed 's/\"/\342\200\235/g'" \
    using (line = strcol(1), tab = strstrt(line, "\t"), \
           TXT[int(line[1:tab - 1]) + 1] = line[tab + 1:], 0) nooutput
set datafile separator "\t"
# A trace captured without a tokenizer has "#id" cells (or none, without /tokens): the
# paragraph is then the ids (or the positions), space-separated.
has_text = TXT[1][1:1] ne "#" && TXT[1] ne ""
if (!has_text) {
    do for [i = 1:T] { TXT[i] = " " . (TXT[i] eq "" ? sprintf("%d", i - 1) : TXT[i]) }
}

# Layout: a monospaced grid of `cols` characters per line; a token that would cross the
# right edge starts the next line; "<0x0A>" (a newline byte) ends the line, "<s>" (a new
# story) starts one. The grid matches the font: DejaVu Sans Mono advances 0.602 em per
# character and the plot spans 0.96 of the width (pngcairo and svg: pixels at 96 per
# inch, fonts in points at 72; pdf: 9 inches at width 1200); a line is 1.25 em high and a
# panel gets its share of 0.87 of the height, less its title. The font is as large as
# both allow; when the height limits it, a second pass lays out more characters per line.
page_pt = fmt eq "pdf" ? 9.0 * width / 1200 * 72 : width * 72 / 96.0
page_h_pt = fmt eq "pdf" ? 6.0 * height / 800 * 72 : height * 72 / 96.0
array RAW[T]
do for [i = 1:T] { RAW[i] = TXT[i] }
array X[T]
array Y[T]
array LEN[T]
cols = 150
do for [pass = 1:2] {
    x = 0
    y = 0
    do for [i = 1:T] {
        newline = RAW[i] eq "<0x0A>"
        s = newline ? "" : RAW[i]
        n = strlen(s)
        if (x > 0 && (x + n > cols || (s eq "<s>" && i > 1))) { x = 0; y = y + 1 }
        if (x == 0 && n > 0 && s[1:1] eq " ") { s = s[2:]; n = n - 1 }
        X[i] = x
        Y[i] = y
        LEN[i] = n
        TXT[i] = s
        x = x + n
        if (newline) { x = 0; y = y + 1 }
    }
    n_lines = y + 1
    by_width = page_pt * 0.96 / (cols + 1) / 0.602
    by_height = (page_h_pt * 0.87 / n_shown - 16) / (n_lines + 1) / 1.25
    char_pt = by_width < by_height ? by_width : by_height
    if (pass == 1 && by_height < by_width) {
        cols = int(page_pt * 0.96 / (char_pt * 0.602)) - 1
    }
}
char_font = sprintf("DejaVu Sans Mono,%.2f", char_pt)

set multiplot layout n_shown, 1 margins 0.02, 0.98, 0.03, 1 - 88.0 / height spacing 0, 0.05 \
    title sprintf("What each policy kept: share of (layer, KV head) caches still holding " \
                  . "each token at the end\n%s, trace %s; prompt (P = %d) in grey%s", \
                  budget_label(budget), trace_rows, P, \
                  has_text ? "" : "; token ids (no tokenizer)") font title_font
# light enough at 1 that black text stays readable on it
set palette defined (0 "#ffffff", 0.5 "#c6dbef", 1 "#6baed6")
set cbrange [0:1]
unset colorbox
unset border
unset xtics
unset ytics
unset grid
unset key
set xrange [-0.5 : cols + 0.5]
set yrange [n_lines - 0.4 : -0.6]
set style fill solid noborder
do for [p = 1:n_shown] {
    pol = word(shown, p)
    stats [*:*][*:*] "< " . tsv(ret, "position fraction", where(pol)) \
        using (FRAC[int($1) + 1] = $2, 0) nooutput
    # one row per token: box centre x, line, half width, fraction, left x, colour, text
    # (a leading space is left out of the text and its cell skipped: cairo drops it)
    set print $LAYOUT
    do for [i = 1:T] {
        if (LEN[i] > 0) {
            lead = TXT[i][1:1] eq " "
            print sprintf("%g\t%d\t%g\t%.6g\t%g\t%d\t%s", X[i] + LEN[i] / 2.0 - 0.5, Y[i], \
                          LEN[i] / 2.0, FRAC[i], X[i] + lead - 0.5, \
                          i <= P ? 0x888888 : 0x000000, lead ? TXT[i][2:] : TXT[i])
        }
    }
    unset print
    set title policy_entry(pol, budget) offset 0, -0.6
    plot $LAYOUT using 1:2:3:(0.45):4 with boxxyerror lc palette, \
         '' using 5:2:7:6 with labels left font char_font tc rgb variable
}
unset multiplot
