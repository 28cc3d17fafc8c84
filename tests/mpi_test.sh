#!/usr/bin/env bash
# mpi_test.sh - `make test-mpi`: kvsim-mpi against the plain kvsim, with real Open MPI
# processes (mpirun, oversubscribed on a small machine):
#   1. byte identity: every result file of `mpirun -n N kvsim-mpi run` equals kvsim run's
#      for N = 1, 2, 3 and 1 or 2 OpenMP threads per rank, on the default experiment (two
#      real traces, thirteen policies), on generated traces with token, prompt-share and
#      byte budgets (several replay groups per trace), and on layer-scope, per-query-head
#      and look-ahead policies (caches that span the row tasks, a prescan);
#   2. a rank's failure: a trace whose attention row is damaged in its last layer (found
#      by the rank that replays that layer) and a trace with a NaN in q (found by a
#      trace check) stop the job with exit status 1 and one line naming the rank and the
#      trace, and the output directory keeps its previous results;
#   3. an interrupt: SIGTERM to mpirun during the replay leaves the previous results in
#      place, byte for byte, and no temporary behind.
# Run from the repository root after `make kvsim kvsim-mpi`. Exit status 0 when all pass.
set -u
KVSIM=${KVSIM:-./kvsim}
KVSIM_MPI=${KVSIM_MPI:-./kvsim-mpi}
DIR=${MPI_TEST_DIR:-build/mpi-test}
# --oversubscribe: more ranks than cores here; -q: Open MPI's own notices off, so a
# failure is kvsim's one line; root is allowed for CI containers
MPIRUN=(mpirun -q --allow-run-as-root --oversubscribe)
export OMPI_MCA_rmaps_base_oversubscribe=1

fails=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

rm -rf "$DIR" && mkdir -p "$DIR" || exit 1

# --- traces: two small generated ones (qk with GQA; attn rows), besides the real ones
"$KVSIM" gen --seed 11 --layers 3 --heads 8 --kv-heads 2 --head-dim 16 --tokens 320 \
    --prefill 96 --f16 -o "$DIR/qk.h5" >/dev/null || exit 1
"$KVSIM" gen --seed 12 --layers 2 --heads 4 --kv-heads 4 --head-dim 8 --tokens 200 \
    --prefill 50 --attn -o "$DIR/attn.h5" >/dev/null || exit 1

# same_files A B: every file under A equals B's, and B has no other; manifest.json is
# there in both but records the command, the date and the machine of its own run
same_files() {
    local a=$1 b=$2 f
    [ "$(cd "$a" && find . -type f | sort)" = "$(cd "$b" && find . -type f | sort)" ] || {
        echo "     file lists differ: $a vs $b"; return 1; }
    for f in $(cd "$a" && find . -type f ! -name manifest.json | sort); do
        cmp -s "$a/$f" "$b/$f" || { echo "     $f differs"; return 1; }
    done
}

# identity NAME ARGS...: kvsim run once, then kvsim-mpi for each (ranks, threads)
identity() {
    local name=$1
    shift
    OMP_NUM_THREADS=1 "$KVSIM" run "$@" -o "$DIR/$name.ref" -q --no-plot >"$DIR/$name.ref.log" 2>&1 ||
        { fail "$name: kvsim run failed: $(tail -1 "$DIR/$name.ref.log")"; return; }
    local combo n t
    for combo in 1x2 2x1 3x1 3x2; do
        n=${combo%x*} t=${combo#*x}
        OMP_NUM_THREADS=$t "${MPIRUN[@]}" -n "$n" "$KVSIM_MPI" run "$@" -o "$DIR/$name.$combo" \
            -q --no-plot >"$DIR/$name.$combo.log" 2>&1
        local rc=$?
        if [ $rc -ne 0 ]; then
            fail "$name: $n ranks x $t threads exited $rc: $(tail -1 "$DIR/$name.$combo.log")"
        elif same_files "$DIR/$name.ref" "$DIR/$name.$combo"; then
            pass "$name: $n ranks x $t threads byte-identical to kvsim run ($(ls "$DIR/$name.ref" | grep -vc manifest.json) result files)"
        else
            fail "$name: $n ranks x $t threads differs from kvsim run"
        fi
    done
}

echo "== byte identity"
identity default configs/default.ini
identity budgets --trace "$DIR/qk.h5,$DIR/attn.h5" \
    --policies window,streamingllm,h2o,morphkv,tova,random \
    --budgets 0.25p,40,12KiB,24KiB --set morphkv.window=8 --seed 7
printf '%s\n' '[experiment]' "trace = $DIR/qk.h5, traces/data/stories260K_T512_P128_seed2.h5" \
    'budgets = 48, 0.5p' "output = $DIR/unused" \
    '[policy tova-layer]' 'type = tova' 'scope = layer' \
    '[policy h2o-per-head]' 'type = h2o' 'kv_granularity = query_head' 'gqa = max' \
    '[policy lookahead]' 'type = lookahead' \
    '[policy oracle]' 'type = oracle' >"$DIR/scopes.ini"
identity scopes "$DIR/scopes.ini"

echo "== a rank's failure stops the job"
# the damaged row is in the last layer: only the trace checks' later, replay-time reading
# finds it, on whichever rank replays that layer
cp "$DIR/attn.h5" "$DIR/badrow.h5"
cp "$DIR/qk.h5" "$DIR/nanq.h5"
/usr/bin/python3 - "$DIR/badrow.h5" "$DIR/nanq.h5" <<'EOF' || exit 1
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    d = f["layers/1/attn"]; row = d[2, 150, :]; d[2, 150, :] = row * 0.9
with h5py.File(sys.argv[2], "r+") as f:
    d = f["layers/2/q"]; v = d[1, 77, :]; v[3] = np.nan; d[1, 77, :] = v
EOF
for bad in badrow nanq; do
    out="$DIR/fault-$bad"
    "$KVSIM" run --trace "$DIR/attn.h5" --policies window,h2o --budgets 32 -o "$out" -q \
        --no-plot >/dev/null 2>&1 || { fail "$bad: could not write the earlier results"; continue; }
    cp -r "$out" "$out.before"
    for n in 1 3; do
        "${MPIRUN[@]}" -n "$n" "$KVSIM_MPI" run --trace "$DIR/attn.h5,$DIR/$bad.h5,$DIR/qk.h5" \
            --policies window,h2o --budgets 32 -o "$out" --force -q --no-plot \
            >"$out.$n.out" 2>"$out.$n.err"
        rc=$?
        lines=$(wc -l <"$out.$n.err")
        if [ $rc -ne 1 ]; then
            fail "$bad, $n ranks: exit status $rc, expected 1"
        elif [ "$lines" -ne 1 ] || ! grep -q "^kvsim run: rank [0-9]*: .*$bad.h5" "$out.$n.err"; then
            fail "$bad, $n ranks: expected one line naming the rank and $bad.h5, got:"
            cat "$out.$n.err"
        elif ! same_files "$out.before" "$out"; then
            fail "$bad, $n ranks: the earlier results changed"
        else
            pass "$bad, $n ranks: exit 1, one line: $(cat "$out.$n.err")"
        fi
    done
done

echo "== an interrupt leaves the earlier results"
"$KVSIM" gen --seed 13 --layers 6 --heads 8 --kv-heads 4 --head-dim 32 --tokens 4096 \
    --prefill 256 -o "$DIR/long.h5" >/dev/null || exit 1
out="$DIR/interrupted"
long_args=(--trace "$DIR/long.h5" --policies window,h2o,snapkv,morphkv,tova,oracle --budgets 64,128,256)
"$KVSIM" run --trace "$DIR/qk.h5" --policies window --budgets 32 -o "$out" -q --no-plot \
    >/dev/null 2>&1 || fail "interrupt: could not write the earlier results"
cp -r "$out" "$out.before"
OMP_NUM_THREADS=1 "${MPIRUN[@]}" -n 3 "$KVSIM_MPI" run "${long_args[@]}" -o "$out" --force \
    --no-plot >"$out.log" 2>&1 &
pid=$!
# wait until the replay has begun (rank 0 reports its first finished unit after a
# second), then interrupt while the other units run
for _ in $(seq 1 100); do
    grep -q "replay" "$out.log" 2>/dev/null && break
    sleep 0.2
done
kill -TERM $pid
wait $pid
rc=$?
leftover=$(find "$out" -name '.*' -type f | wc -l)
if [ $rc -eq 0 ] || grep -q "results: " "$out.log"; then
    fail "interrupt: the job finished before SIGTERM (exit $rc; make the trace longer)"
elif ! same_files "$out.before" "$out"; then
    fail "interrupt: the earlier results changed (exit $rc)"
elif [ "$leftover" -ne 0 ]; then
    fail "interrupt: $leftover temporaries left in $out"
else
    pass "interrupt: SIGTERM to mpirun (exit $rc) left the earlier results byte for byte"
fi

if [ $fails -ne 0 ]; then
    echo "kvsim-mpi: $fails check(s) FAILED"
    exit 1
fi
echo "kvsim-mpi: all MPI checks passed"
