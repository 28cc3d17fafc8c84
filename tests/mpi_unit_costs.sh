#!/usr/bin/env bash
# mpi_unit_costs.sh DIR - the per-unit costs SCALING.md's model starts from: CPU seconds
# of one replay unit (one layer of Llama-3.1-8B head geometry: 32 query heads over 8 KV
# heads, head_dim 128, float16, P = T/2) on one thread, at T = 1024, 2048 and 4096, for
# `full` alone (the row production: the q.k SGEMM, softmax and top keys every policy
# shares) and for the five seed policies at budgets T/16 and T/8, plus the bytes of the
# unit's trace read and of its layer part, and a trace check's CPU seconds (the whole
# file scanned, its bytes). Part of `make bench-mpi`; results in
# DIR/unit_costs.tsv.
set -u
DIR=${1:-build/bench-mpi}
mkdir -p "$DIR" || exit 1
printf 'T\tpolicies\truns\tcpu_s\tlayer_read_bytes\tpart_bytes\n' >"$DIR/unit_costs.tsv"
for T in 1024 2048 4096; do
    trace=$DIR/llama_geom_L1_T$T.h5
    [ -f "$trace" ] || ./kvsim gen --seed 2 --layers 1 --heads 32 --kv-heads 8 --head-dim 128 \
        --tokens $T --prefill $((T / 2)) --f16 -o "$trace" >/dev/null || exit 1
    # q (32 heads) and k (8 heads) of the layer, float16: what the replay reads
    read_bytes=$(( (32 + 8) * T * 128 * 2 ))
    for set in full seed; do
        if [ $set = full ]; then pols=full budgets=$((T / 8)) runs=1
        else pols=window,streamingllm,h2o,snapkv,morphkv budgets=$((T / 16)),$((T / 8)) runs=10; fi
        OMP_NUM_THREADS=1 /usr/bin/time -f "%U %S" -o "$DIR/unit.time" \
            ./kvsim-mpi run --trace "$trace" --policies $pols --budgets $budgets \
            -o "$DIR/unit_out" --force --no-plot >/dev/null 2>"$DIR/unit.err" || {
            tail -2 "$DIR/unit.err"; exit 1; }
        read -r user sys <"$DIR/unit.time"
        part=$(grep "replay: .* units in" "$DIR/unit.err" | sed -E 's/.*\(([0-9]+) per part.*/\1/')
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' $T $set $runs "$(echo "$user + $sys" | bc)" \
            $read_bytes "$part" >>"$DIR/unit_costs.tsv"
    done
    # a check unit: every value of the trace scanned (q, k, v of the layer)
    /usr/bin/time -f "%U %S" -o "$DIR/unit.time" ./kvsim info --check "$trace" >/dev/null || exit 1
    read -r user sys <"$DIR/unit.time"
    printf '%s\tcheck\t0\t%s\t%s\t0\n' $T "$(echo "$user + $sys" | bc)" \
        "$(stat -c %s "$trace")" >>"$DIR/unit_costs.tsv"
done
column -t -s $'\t' "$DIR/unit_costs.tsv"
