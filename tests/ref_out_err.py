#!/usr/bin/python3
"""ref_out_err.py - an independent numpy float64 check of kvsim's open-loop out_err.

For a qk trace with v and a results directory of `kvsim run` with policies `full` and
`window` (whose sets are known: A_t = {0..t} and {t-B..t}), recomputes per decode step t,
layer and query head h: p = softmax(softmax_scale q_t . k_j) over j <= t,
o_full = sum_j p[j] v_j, o_cache = sum over A_t of p[j] v_j / sum over A_t of p[j], and
out_err = |o_cache - o_full| / |o_full|; then the mean over layers and heads per step
(steps.tsv `out_err`) and over steps (summary.tsv `out_err_mean`). kvsim's rows are float32
softmaxes, so they agree to TOL. Exits 1 on a mismatch, 0 otherwise.

usage: ref_out_err.py TRACE.h5 RESULTS_DIR
"""
import os
import sys

import h5py
import numpy as np

TOL = 2e-5


def main(argv):
    trace, results = argv[1], argv[2]
    with h5py.File(trace, "r") as f:
        L, H, G = (int(f.attrs[k]) for k in ("n_layers", "n_heads", "n_kv_heads"))
        T, P = int(f.attrs["n_tokens"]), int(f.attrs["prefill_len"])
        scale = float(f.attrs["softmax_scale"])
        q = [np.array(f[f"layers/{l}/q"], dtype=np.float64) for l in range(L)]
        k = [np.array(f[f"layers/{l}/k"], dtype=np.float64) for l in range(L)]
        v = [np.array(f[f"layers/{l}/v"], dtype=np.float64) for l in range(L)]
    name = os.path.basename(trace)
    with open(os.path.join(results, "steps.tsv")) as f:
        head = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(head, line.rstrip("\n").split("\t"))) for line in f]
    runs = sorted({(r["policy"], int(r["budget"])) for r in rows if r["trace"] == name})
    bad = 0
    for policy, budget in runs:
        assert policy in ("full", "window"), "only full and window have known sets"
        got = {int(r["step"]): float(r["out_err"]) for r in rows
               if r["trace"] == name and r["policy"] == policy and int(r["budget"]) == budget}
        worst = 0.0
        for t in range(P, T):
            lo = 0 if policy == "full" else max(0, t - budget)
            errs = []
            for l in range(L):
                for h in range(H):
                    g = h // (H // G)
                    x = scale * (k[l][g, :t + 1] @ q[l][h, t])
                    p = np.exp(x - x.max())
                    p /= p.sum()
                    o_full = p @ v[l][g, :t + 1]
                    o_cache = (p[lo:] @ v[l][g, lo:t + 1]) / p[lo:].sum()
                    norm = np.linalg.norm(o_full)
                    errs.append(np.linalg.norm(o_cache - o_full) / norm if norm else 0.0)
            want = float(np.mean(errs))
            worst = max(worst, abs(got[t] - want))
            if abs(got[t] - want) > TOL:
                bad += 1
                if bad <= 10:
                    print(f"MISMATCH {policy} B={budget} t={t}: out_err {got[t]:.9g}, "
                          f"numpy {want:.9g}")
        print(f"{name} {policy} B={budget}: largest |out_err - numpy| {worst:.2e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
