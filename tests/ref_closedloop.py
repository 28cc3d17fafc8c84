#!/usr/bin/python3
"""ref_closedloop.py - an independent float64 check of kvsim's closed loop.

Written from ../shared/models/README.md's architecture, in numpy float64, sharing no code
with kvsim. Given a checkpoint, a trace captured from it, the sets A_t kvsim's closed loop
attended over (kvsim run --model ... --dump-sets DIR) and that run's steps.tsv and
summary.tsv, it reruns the model teacher-forced on the trace's tokens, once with the full
cache and once per (policy, budget) run with every query head at every decode step
attending over exactly the dumped A_t (the keys and values of positions >= P computed by
that run itself), and recomputes per step kl = KL(full || run), nll, top1, and per run
kl_mean, ppl, ppl_full and top1_agree. It reports the largest differences from kvsim's and
exits 1 when one exceeds what float32 rounding explains (see TOLERANCES), 0 otherwise.

CHECKPOINT may be a comma-separated list: the one whose SHA-256 is the trace's
checkpoint_sha256 attribute is used.

usage: ref_closedloop.py CHECKPOINT[,CHECKPOINT] TRACE.h5 SETS_FILE RESULTS_DIR [--quiet]
"""
import hashlib
import math
import os
import struct
import sys

import h5py
import numpy as np

# kvsim computes in float32; the reference in float64. How far float32 alone moves a
# step's numbers is measured on the full cache, where no policy is involved: the largest
# difference of kvsim's nll_full from the reference's over the trace's steps (E_model).
# A run's step kl and nll must agree within STEP_FACTOR * E_model (a policy's run has
# the same float32 forward pass, over a different set of keys); the means over steps,
# which average the rounding out, within the fixed MEAN_TOLERANCES. A top-1 disagreement
# is explained by rounding only when the reference's two best logits lie within TOP1_GAP.
STEP_FACTOR = 8.0
MEAN_TOLERANCES = {"kl_abs": 2e-5, "kl_rel": 2e-4, "ppl_rel": 2e-5}
TOP1_GAP = 1e-3


def load_checkpoint(path):
    """The llama2.c layout of the models README: 7 int32, then float32 tensors."""
    with open(path, "rb") as f:
        raw = f.read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    hs = dim // n_heads
    kvd = n_kv * hs
    w = np.frombuffer(raw, dtype="<f4", offset=28).astype(np.float64)
    at = 0

    def take(*shape):
        nonlocal at
        n = int(np.prod(shape))
        out = w[at:at + n].reshape(shape)
        at += n
        return out

    m = {"dim": dim, "hidden": hidden, "L": n_layers, "H": n_heads, "G": n_kv,
         "vocab": vocab, "hs": hs}
    m["emb"] = take(vocab, dim)
    m["att_norm"] = take(n_layers, dim)
    m["wq"] = take(n_layers, dim, dim)
    m["wk"] = take(n_layers, kvd, dim)
    m["wv"] = take(n_layers, kvd, dim)
    m["wo"] = take(n_layers, dim, dim)
    m["ffn_norm"] = take(n_layers, dim)
    m["w1"] = take(n_layers, hidden, dim)
    m["w2"] = take(n_layers, dim, hidden)
    m["w3"] = take(n_layers, hidden, dim)
    m["final_norm"] = take(dim)
    take(2 * (seq_len * hs // 2))          # the two unused RoPE tables
    m["cls"] = m["emb"] if shared else take(vocab, dim)
    assert at == w.size, "checkpoint size does not match its header"
    return m


def rmsnorm(x, gain):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * gain


def rope(vec, pos, hs):
    """Rotates pairs (i, i+1), i even, by pos / 10000^((i mod hs) / hs); vec [..., n]."""
    n = vec.shape[-1]
    j = np.arange(0, n, 2) % hs
    angle = pos / np.power(10000.0, j / hs)
    c, s = np.cos(angle), np.sin(angle)
    a, b = vec[..., 0::2], vec[..., 1::2]
    out = np.empty_like(vec)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def read_sets(path):
    with open(path, "rb") as f:
        assert f.readline() == b"KVSETS1\n", "not a kvsim sets file"
        T, P, R, L, H = map(int, f.readline().split())
        runs = []
        for _ in range(R):
            label, budget = f.readline().decode().rstrip("\n").split("\t")
            runs.append((label, int(budget)))
        nbytes = (T + 7) // 8
        data = np.frombuffer(f.read(), dtype=np.uint8)
    assert data.size == (T - P) * R * L * H * nbytes, "sets file is truncated"
    bits = np.unpackbits(data.reshape(T - P, R, L, H, nbytes), axis=-1, bitorder="little")
    return T, P, runs, bits[..., :T].astype(bool)   # [D, R, L, H, T]


def log_softmax(z):
    mx = z.max(axis=-1, keepdims=True)
    return (z - mx) - np.log(np.exp(z - mx).sum(axis=-1, keepdims=True))


def run_reference(m, tokens, P, sets):
    """Sequence 0: the full cache; sequence r + 1: run r over its sets. Returns per decode
    step t = P..T-2: kl [R, D-1], nll [R, D-1], nll_full [D-1], top1 [R, D-1], and the top-2
    logit gap of the full cache [D-1]."""
    T = len(tokens)
    D, R = T - P, sets.shape[1]
    S, L, H, G, hs = R + 1, m["L"], m["H"], m["G"], m["hs"]
    group = H // G
    K = np.zeros((S, L, G, T, hs))
    V = np.zeros((S, L, G, T, hs))
    kl = np.zeros((R, D - 1))
    nll = np.zeros((R, D - 1))
    top1 = np.zeros((R, D - 1))
    nll_full = np.zeros(D - 1)
    gap = np.zeros(D - 1)
    g_of_h = np.arange(H) // group
    for t in range(T):
        x = np.repeat(m["emb"][tokens[t]][None, :], S, axis=0)
        for l in range(L):
            xb = rmsnorm(x, m["att_norm"][l])
            q = rope(xb @ m["wq"][l].T, t, hs).reshape(S, H, hs)
            K[:, l, :, t] = rope(xb @ m["wk"][l].T, t, hs).reshape(S, G, hs)
            V[:, l, :, t] = (xb @ m["wv"][l].T).reshape(S, G, hs)
            keys = K[:, l][:, g_of_h, :t + 1]                 # [S, H, t+1, hs]
            vals = V[:, l][:, g_of_h, :t + 1]
            scores = np.einsum("shd,shjd->shj", q, keys) / math.sqrt(hs)
            if t >= P:
                allowed = np.ones((S, H, t + 1), dtype=bool)
                allowed[1:] = sets[t - P, :, l, :, :t + 1]
                scores = np.where(allowed, scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            wts = np.exp(scores)
            wts /= wts.sum(axis=-1, keepdims=True)
            out = np.einsum("shj,shjd->shd", wts, vals).reshape(S, H * hs)
            x = x + out @ m["wo"][l].T
            xb = rmsnorm(x, m["ffn_norm"][l])
            h1 = xb @ m["w1"][l].T
            x = x + ((h1 / (1.0 + np.exp(-h1))) * (xb @ m["w3"][l].T)) @ m["w2"][l].T
        if P <= t <= T - 2:
            logits = rmsnorm(x, m["final_norm"]) @ m["cls"].T   # [S, vocab]
            lp = log_softmax(logits)
            d = t - P
            pf = np.exp(lp[0])
            kl[:, d] = (pf[None, :] * (lp[0][None, :] - lp[1:])).sum(axis=1)
            nll[:, d] = -lp[1:, tokens[t + 1]]
            nll_full[d] = -lp[0, tokens[t + 1]]
            top1[:, d] = logits[1:].argmax(axis=1) == logits[0].argmax()
            two = np.sort(logits[0])[-2:]
            gap[d] = two[1] - two[0]
    return kl, nll, nll_full, top1, gap


def read_tsv(path):
    with open(path) as f:
        head = f.readline().rstrip("\n").split("\t")
        return [dict(zip(head, line.rstrip("\n").split("\t"))) for line in f]


def main(argv):
    if len(argv) < 5:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    ckpt, trace, sets_path, results = argv[1:5]
    quiet = "--quiet" in argv[5:]
    with h5py.File(trace, "r") as f:
        tokens = np.array(f["tokens"], dtype=np.int64)
        P = int(f.attrs["prefill_len"])
        want = f.attrs.get("checkpoint_sha256", b"")
    want = want.decode() if isinstance(want, bytes) else str(want)
    paths = ckpt.split(",")
    if len(paths) > 1:
        found = [p for p in paths if hashlib.sha256(open(p, "rb").read()).hexdigest() == want]
        if not found:
            print(f"{trace}: checkpoint sha256 {want} is none of {ckpt}", file=sys.stderr)
            return 2
        ckpt = found[0]
    m = load_checkpoint(ckpt)
    T, P_sets, runs, sets = read_sets(sets_path)
    assert (T, P_sets) == (len(tokens), P), "sets file and trace disagree on T or P"
    kl, nll, nll_full, top1, gap = run_reference(m, tokens, P, sets)
    name = os.path.basename(trace)
    steps, summary = {}, {}
    for row in read_tsv(os.path.join(results, "steps.tsv")):
        if row["trace"] == name:
            steps[(row["policy"], int(row["budget"]), int(row["step"]))] = row
    for row in read_tsv(os.path.join(results, "summary.tsv")):
        if row["trace"] == name:
            summary[(row["policy"], int(row["budget"]))] = row
    worst = {"kl_step": 0.0, "nll_step": 0.0, "kl_mean": 0.0, "ppl": 0.0, "ppl_full": 0.0}
    failures = []
    label0, budget0 = runs[0]
    e_model = max(abs(float(steps[(label0, budget0, P + d)]["nll_full"]) - nll_full[d])
                  for d in range(T - P - 1))
    step_tol = STEP_FACTOR * e_model + 1e-7
    for r, (label, budget) in enumerate(runs):
        unexplained = 0
        for d in range(T - P - 1):
            row = steps[(label, budget, P + d)]
            k_kv, n_kv, t_kv = float(row["kl"]), float(row["nll"]), float(row["top1"])
            dk = abs(k_kv - kl[r, d])
            worst["kl_step"] = max(worst["kl_step"], dk)
            worst["nll_step"] = max(worst["nll_step"], abs(n_kv - nll[r, d]))
            if dk > step_tol:
                failures.append(f"{label} B={budget} t={P + d}: kl {k_kv:.9g}, "
                                f"reference {kl[r, d]:.9g}")
            if abs(n_kv - nll[r, d]) > step_tol:
                failures.append(f"{label} B={budget} t={P + d}: nll {n_kv:.9g}, "
                                f"reference {nll[r, d]:.9g}")
            if t_kv != top1[r, d] and gap[d] > TOP1_GAP:
                unexplained += 1
        s = summary[(label, budget)]
        ref_kl, ref_ppl = kl[r].mean(), math.exp(nll[r].mean())
        ref_ppl_full, ref_top1 = math.exp(nll_full.mean()), top1[r].mean()
        got_kl, got_ppl = float(s["kl_mean"]), float(s["ppl"])
        got_full, got_top1 = float(s["ppl_full"]), float(s["top1_agree"])
        worst["kl_mean"] = max(worst["kl_mean"], abs(got_kl - ref_kl))
        worst["ppl"] = max(worst["ppl"], abs(got_ppl / ref_ppl - 1))
        worst["ppl_full"] = max(worst["ppl_full"], abs(got_full / ref_ppl_full - 1))
        if abs(got_kl - ref_kl) > MEAN_TOLERANCES["kl_abs"] + MEAN_TOLERANCES["kl_rel"] * ref_kl:
            failures.append(f"{label} B={budget}: kl_mean {got_kl:.9g}, reference {ref_kl:.9g}")
        if abs(got_ppl / ref_ppl - 1) > MEAN_TOLERANCES["ppl_rel"]:
            failures.append(f"{label} B={budget}: ppl {got_ppl:.9g}, reference {ref_ppl:.9g}")
        if abs(got_full / ref_ppl_full - 1) > MEAN_TOLERANCES["ppl_rel"]:
            failures.append(f"{label} B={budget}: ppl_full {got_full:.9g}, reference "
                            f"{ref_ppl_full:.9g}")
        flips = round(abs(got_top1 - ref_top1) * (T - P - 1))
        if unexplained:
            failures.append(f"{label} B={budget}: top1 differs at {unexplained} steps whose "
                            f"full-cache logits are not within {TOP1_GAP} of a tie")
        if not quiet:
            print(f"{name}\t{label}\tB={budget}\tkl_mean {got_kl:.6g} (ref {ref_kl:.6g})\t"
                  f"ppl {got_ppl:.6g} (ref {ref_ppl:.6g})\ttop1_agree {got_top1:.4f} "
                  f"(ref {ref_top1:.4f}, {flips} near-tie flips)")
    print(f"{name}: float32 error of the full cache's step nll (E_model) {e_model:.2e}")
    print(f"{name}: {len(runs)} runs, largest differences from the float64 reference: "
          f"step kl {worst['kl_step']:.2e}, step nll {worst['nll_step']:.2e}, kl_mean "
          f"{worst['kl_mean']:.2e}, ppl {worst['ppl']:.2e} (relative), ppl_full "
          f"{worst['ppl_full']:.2e} (relative)")
    for f in failures[:20]:
        print("MISMATCH: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
