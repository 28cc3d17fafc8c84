# need.gp - stop the calling figure script unless a TSV file has the named columns.
#   call adir."/need.gp" FILE "col1 col2 ..."
# On a missing file or column: gnuplot exits with status 1 and the message
# "FILE: no column 'col2' (has: ...)" on stderr.
need_msg = system(tsv_opts(ARG1, ARG2, "", "-v check=1") . " 2>&1")
if (strlen(need_msg) > 0) {
    exit error need_msg
}
