#!/bin/sh
# recapture.sh - `make traces`: recapture every committed real trace of traces/data/ into
# build/traces/ and check with h5diff that every dataset and attribute equals the
# committed file's (a trace not yet committed is copied in). The commands are the
# provenance that traces/data/README.md records.
#
#   stories260K_T512_P128_seed{1,2}.h5  token ids only, the model's own prompt region
#   stories15M_T256_seed{1,2,3}.h5      prompt = line SEED of stories15M_prompts.txt,
#                                       temperature 1.0, top-p 0.9, float16 q/k/v
#   stories15M_T256_greedy.h5           prompt = line 1, temperature 0, float16 q/k/v
#
# usage: recapture.sh KVSIM MODELS_DIR
set -eu
kvsim=$1
models=$2
out=build/traces
data=traces/data
mkdir -p "$out"

check() {
    name=$1
    if [ ! -f "$data/$name" ]; then
        cp "$out/$name" "$data/$name" && echo "traces: wrote $data/$name"
    elif h5diff "$data/$name" "$out/$name" >/dev/null; then
        echo "traces: $data/$name reproduced (h5diff: every dataset and attribute equal)"
    else
        h5diff -r "$data/$name" "$out/$name" | tail -n 20
        echo "traces: $data/$name differs from $out/$name"
        exit 1
    fi
}

skipped=0
# have FILE: 1 when the checkpoint is there, else says which traces it skips
have() {
    [ -f "$models/$1" ] && return 0
    echo "traces: $models/$1 missing (make models): its traces are not checked"
    skipped=1
    return 1
}

have stories260K.bin && for s in 1 2; do
    name=stories260K_T512_P128_seed$s.h5
    "$kvsim" capture --model "$models/stories260K.bin" --tokens 512 --prefill 128 \
        --temperature 1.0 --top-p 0.9 --seed "$s" -o "$out/$name"
    check "$name"
done

prompt() { sed -n "$1p" "$data/stories15M_prompts.txt"; }
have stories15M.bin && for s in 1 2 3; do
    name=stories15M_T256_seed$s.h5
    "$kvsim" capture --model "$models/stories15M.bin" --tokenizer "$models/tokenizer.bin" \
        --prompt "$(prompt "$s")" --tokens 256 --temperature 1.0 --top-p 0.9 --seed "$s" \
        --f16 -o "$out/$name"
    check "$name"
done
if [ -f "$models/stories15M.bin" ]; then
    name=stories15M_T256_greedy.h5
    "$kvsim" capture --model "$models/stories15M.bin" --tokenizer "$models/tokenizer.bin" \
        --prompt "$(prompt 1)" --tokens 256 --temperature 0 --f16 -o "$out/$name"
    check "$name"
fi
exit "$skipped"
