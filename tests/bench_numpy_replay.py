#!/usr/bin/python3
"""bench_numpy_replay.py - the peer `make bench` times kvsim against: a vectorised NumPy
replay of `full`, `window` and `h2o` (recent = 0.5, gqa = sum) on a qk trace, written as a
researcher would in an afternoon, following kvsim's replay semantics (README "Replay
semantics"):

  - the rows of a block of 64 queries: one batched matmul per block (the query heads of a
    GQA group against their shared keys 0..t1-1), a float32 softmax (max subtracted);
  - per decode step t >= P, every KV head at once (arrays over the groups):
      full:   A_t = {0..t},          recall = sum_j p_t[j]
      window: A_t = {t-B..t},        recall = sum over A_t
      h2o:    A_t = S u {t}; recall over A_t; the group's accumulators add the observed
              row p_t / recall over A_t; then with |A_t| = B + 1 the r = floor(B/2) most
              recent stay and, of the others, the one with the lowest summed score leaves
              (ties: the older one);
    prefill rows are observed whole (acc += p_t over 0..t), and at t = P-1 h2o keeps the
    r most recent and the B - r best of the rest (ties to the more recent).

usage: bench_numpy_replay.py TRACE --budget B [--check STEPS.tsv]

Prints `RESULT wall_s cpu_s` (the replay, reading included; CPU time of the process).
--check compares the per-step recall (mean over layers and query heads) of each policy
with kvsim's steps.tsv of the same run and exits 1 when any differs by more than 1e-6.
Run with one thread: OPENBLAS_NUM_THREADS=1 (set here before NumPy loads).
"""
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

BLOCK = 64


def replay(path, budget):
    """Per-step recall of full, window, h2o: dict name -> [D] means over layers, heads."""
    f = h5py.File(path, "r")
    a = f.attrs
    L, H, G, hd = int(a["n_layers"]), int(a["n_heads"]), int(a["n_kv_heads"]), int(a["head_dim"])
    T, P = int(a["n_tokens"]), int(a["prefill_len"])
    scale = np.float32(a["softmax_scale"] if "softmax_scale" in a else 1.0 / np.sqrt(hd))
    grp, B, D = H // G, budget, T - P
    r = int(np.floor(0.5 * B))
    sums = {k: np.zeros(D) for k in ("full", "window", "h2o")}
    gi = np.arange(G)[:, None]
    for layer in range(L):
        q = f[f"layers/{layer}/q"][:].astype(np.float32)       # [H, T, hd]
        k = f[f"layers/{layer}/k"][:].astype(np.float32)       # [G, T, hd]
        qg = q.reshape(G, grp, T, hd)
        acc = np.zeros((G, grp, T))                             # h2o, per head
        S = None                                                # h2o cache [G, B], ascending
        for t0 in range(0, T, BLOCK):
            t1 = min(t0 + BLOCK, T)
            nb = t1 - t0
            x = np.matmul(qg[:, :, t0:t1].reshape(G, grp * nb, hd),
                          k[:, :t1].transpose(0, 2, 1)) * scale   # [G, grp*nb, t1]
            x = x.reshape(G, grp, nb, t1)
            mask = np.arange(t1)[None, :] > np.arange(t0, t1)[:, None]
            x[:, :, mask] = -np.inf
            x -= x.max(axis=3, keepdims=True)
            p = np.exp(x)
            p /= p.sum(axis=3, keepdims=True, dtype=np.float64).astype(np.float32)
            pre = min(max(P - t0, 0), nb)                       # prefill rows of the block
            if pre:
                acc[:, :, :t1] += p[:, :, :pre].sum(axis=2, dtype=np.float64)
            if t0 <= P - 1 < t1:                                # h2o's select at t = P-1
                S = np.empty((G, min(B, P)), dtype=np.int64)
                for g in range(G):
                    score = acc[g, :, :P].sum(axis=0)
                    if P <= B:
                        S[g] = np.arange(P)
                        continue
                    cand = np.arange(P - r)
                    order = np.lexsort((-cand, -score[:P - r]))  # best first, ties: recent
                    keep = np.sort(cand[order[:B - r]])
                    S[g] = np.concatenate([keep, np.arange(P - r, P)])
                    gone = np.setdiff1d(np.arange(P), S[g])
                    acc[g, :, gone] = 0
            for i in range(pre, nb):                            # decode steps
                t = t0 + i
                row = p[:, :, i, :t + 1].astype(np.float64)     # [G, grp, t+1]
                s = t - P
                sums["full"][s] += row.sum()
                sums["window"][s] += row[:, :, max(0, t - B):].sum()
                A = np.concatenate([S, np.full((G, 1), t)], axis=1)   # [G, n]
                pa = np.take_along_axis(row, np.broadcast_to(A[:, None, :], (G, grp, A.shape[1])),
                                        axis=2)
                rec = pa.sum(axis=2)                            # [G, grp]
                sums["h2o"][s] += rec.sum()
                w = np.divide(pa, rec[:, :, None], out=np.zeros_like(pa),
                              where=rec[:, :, None] > 0)
                acc[gi[:, :, None], np.arange(grp)[None, :, None], A[:, None, :]] += w
                n = A.shape[1]
                if n <= B:
                    S = A
                    continue
                cand = A[:, :n - r]
                score = acc[gi, :, cand].sum(axis=2)            # [G, n-r] (heads summed)
                worst = np.argmin(score, axis=1)                # first = oldest of the ties
                if B - r < n - r - 1:
                    raise SystemExit("bench_numpy_replay: more than one eviction per step")
                gone = cand[np.arange(G), worst]
                acc[np.arange(G), :, gone] = 0
                keepmask = np.ones_like(A, dtype=bool)
                keepmask[np.arange(G), worst] = False
                S = A[keepmask].reshape(G, n - 1)
    f.close()
    return {name: v / (L * H) for name, v in sums.items()}


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help") or "--budget" not in args:
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    path = args[0]
    budget = int(args[args.index("--budget") + 1])
    w0, c0 = time.monotonic(), time.process_time()
    res = replay(path, budget)
    wall, cpu = time.monotonic() - w0, time.process_time() - c0
    if "--check" in args:
        steps = args[args.index("--check") + 1]
        worst, n = 0.0, 0
        with open(steps) as fh:
            cols = fh.readline().rstrip("\n").split("\t")
            ip, ib, ist, ir = (cols.index(c) for c in ("policy", "budget", "step", "recall"))
            rows = [line.rstrip("\n").split("\t") for line in fh]
        first = min(int(v[ist]) for v in rows)
        for v in rows:
            if v[ip] in res and int(v[ib]) == budget:
                worst = max(worst, abs(float(v[ir]) - res[v[ip]][int(v[ist]) - first]))
                n += 1
        want = sum(len(x) for x in res.values())
        print(f"check: {n} steps of kvsim's {steps} against NumPy: largest recall "
              f"difference {worst:.3g}", file=sys.stderr)
        if n != want or worst > 1e-6:
            print(f"bench_numpy_replay: recall differs from kvsim's ({worst:.3g} over {n} of "
                  f"{want} steps)", file=sys.stderr)
            return 1
    print(f"RESULT {wall:.6f} {cpu:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
