# tsv.awk - select columns of a kvsim result file (TSV with a header row) by name.
#
#   awk -f tsv.awk -v cols="step recall" [-v where="policy=h2o;budget_spec=64"] FILE
#       prints the named columns, tab-separated, of every data row whose columns equal
#       every NAME=VALUE of `where` (';'-separated);
#   ... -v distinct=1   each distinct output line once, in order of first appearance,
#                       wrapped in double quotes and space-separated (a gnuplot word list);
#   ... -v check=1      prints nothing when FILE has every column of cols and of where.
#
# Fails loudly: a missing or empty FILE, or a column it lacks, prints one line naming the
# file and the column ("results/x/steps.tsv: no column 'recall' (has: trace policy ...)")
# and exits with status 2. With check=1 that line goes to stdout (gnuplot's system()
# reads it and stops with it); otherwise to stderr.
# Policy labels and trace names must not contain ';', '=', '"' or "'".

BEGIN {
    FS = OFS = "\t"
    n_cols = split(cols, want, " ")
    n_where = split(where, conds, ";")
    for (i = 1; i <= n_where; i++) {
        eq = index(conds[i], "=")
        wname[i] = substr(conds[i], 1, eq - 1)
        wvalue[i] = substr(conds[i], eq + 1)
    }
    file = ARGV[1]
    if (file == "" || (getline header < file) <= 0)
        fail(file ": missing or empty (no header row)")
    close(file)
    n_have = split(header, have, "\t")
    for (i = 1; i <= n_have; i++)
        idx[have[i]] = i
    for (i = 1; i <= n_cols; i++)
        need(want[i])
    for (i = 1; i <= n_where; i++)
        need(wname[i])
    if (check)
        exit 0
}

function need(name) {
    if (!(name in idx))
        fail(file ": no column '" name "' (has: " header_words() ")")
}

function header_words(   s, i) {
    s = have[1]
    for (i = 2; i <= n_have; i++)
        s = s " " have[i]
    return s
}

function fail(msg) {
    if (check)
        print msg
    else
        print "tsv.awk: " msg > "/dev/stderr"
    failed = 1
    exit 2
}

FNR == 1 { next }

{
    for (i = 1; i <= n_where; i++)
        if ($(idx[wname[i]]) != wvalue[i])
            next
    line = $(idx[want[1]])
    for (i = 2; i <= n_cols; i++)
        line = line OFS $(idx[want[i]])
    if (!distinct) {
        print line
        next
    }
    if (!(line in seen)) {
        seen[line] = 1
        list = list (list == "" ? "" : " ") "\"" line "\""
    }
}

END {
    if (failed)
        exit 2
    if (distinct && !check)
        print list
}
