#!/usr/bin/env bash
# mpi_bench.sh DIR - `make bench-mpi`: kvsim-mpi's ranks x threads combinations against the
# plain kvsim on one trace of Llama-3.1-8B head geometry (32 query heads over 8 KV heads,
# head_dim 128; 4 layers, T = 2048, P = 1024, float16) with the five seed policies at two
# budgets. For each combination: wall seconds, CPU seconds of all processes, and, from
# rank 0's cost line, the units' own seconds, the bytes of layer parts gathered (per
# unit) and rank 0's seconds receiving and folding them. Every result set is checked
# byte for byte against kvsim run's. Results in DIR/results.tsv; BENCH_REPEAT=N rounds
# (default 1; the median wall time is reported). The trace is generated once and kept.
set -u
DIR=${1:-build/bench-mpi}
REPEAT=${BENCH_REPEAT:-1}
KVSIM=./kvsim
KVSIM_MPI=./kvsim-mpi
MPIRUN=(mpirun -q --allow-run-as-root --oversubscribe)
mkdir -p "$DIR" || exit 1
trace=$DIR/llama_geom_L4_T2048.h5
if [ ! -f "$trace" ]; then
    "$KVSIM" gen --seed 1 --layers 4 --heads 32 --kv-heads 8 --head-dim 128 --tokens 2048 \
        --prefill 1024 --f16 -o "$trace" >/dev/null || exit 1
fi
args=(--trace "$trace" --policies window,streamingllm,h2o,snapkv,morphkv --budgets 256,512
      --no-plot --force)

# one_run LABEL RANKS THREADS: appends "wall cpu unit_s bytes parts recv_s fold_s" to
# DIR/LABEL.times (RANKS 0: the plain kvsim)
one_run() {
    local label=$1 n=$2 t=$3 out=$DIR/out.$1
    local cmd=("$KVSIM" run "${args[@]}" -o "$out")
    [ "$n" -gt 0 ] && cmd=("${MPIRUN[@]}" -n "$n" "$KVSIM_MPI" run "${args[@]}" -o "$out")
    OMP_NUM_THREADS=$t /usr/bin/time -f "%e %U %S" -o "$DIR/$label.time" "${cmd[@]}" \
        >"$DIR/$label.log" 2>"$DIR/$label.err" || { echo "$label failed:"; tail -3 "$DIR/$label.err"; exit 1; }
    read -r wall user sys <"$DIR/$label.time"
    local line
    line=$(grep "replay: .* units in" "$DIR/$label.err" | tail -1)
    local unit_s=NA bytes=NA parts=NA recv=NA fold=NA
    if [ -n "$line" ]; then
        unit_s=$(sed -E 's/.*own time ([0-9.]+) s.*/\1/' <<<"$line")
        bytes=$(sed -E 's/.*gathered ([0-9]+) bytes.*/\1/' <<<"$line")
        parts=$(sed -E 's/.* ([0-9]+) parts.*/\1/' <<<"$line")
        recv=$(sed -E 's/.*, ([0-9.]+) s receiving.*/\1/' <<<"$line")
        fold=$(sed -E 's/.*, ([0-9.]+) s folding.*/\1/' <<<"$line")
    fi
    echo "$wall $(echo "$user + $sys" | bc) $unit_s $bytes $parts $recv $fold" >>"$DIR/$label.times"
}

combos="plain:0:1 plain:0:2 mpi:1:2 mpi:2:1 mpi:2:2 mpi:3:1 mpi:3:2"
rm -f "$DIR"/*.times
for _ in $(seq 1 "$REPEAT"); do
    for c in $combos; do
        IFS=: read -r kind n t <<<"$c"
        one_run "${kind}_${n}x${t}" "$n" "$t"
    done
done

ref=$DIR/out.plain_0x1
{
printf 'run\tranks\tthreads\twall_s\tcpu_s\tunits_own_s\tbytes_gathered\tbytes_per_unit\trank0_recv_s\trank0_fold_s\tidentical\n'
for c in $combos; do
    IFS=: read -r kind n t <<<"$c"
    label=${kind}_${n}x${t}
    # the round with the median wall time
    row=$(sort -n "$DIR/$label.times" | sed -n "$(( (REPEAT + 1) / 2 ))p")
    read -r wall cpu unit_s bytes parts recv fold <<<"$row"
    per=NA
    [ "$parts" != NA ] && per=$(( bytes / parts ))
    same=yes
    for f in "$ref"/*.tsv; do   # manifest.json records its own run's command and date cmp -s "$f" "$DIR/out.$label/$(basename "$f")" || same=no; done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$n" "$t" "$wall" "$cpu" \
        "$unit_s" "$bytes" "$per" "$recv" "$fold" "$same"
done
} >"$DIR/results.tsv"
column -t -s $'\t' "$DIR/results.tsv"
echo "bench-mpi: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load $(cut -d' ' -f1-3 /proc/loadavg); results in $DIR/results.tsv"
