#!/usr/bin/python3
"""ref_llama.py - an independent numpy (float64) reference of the llama2.c forward pass.

Used by tests/test_model.c to check the C forward pass (traces/model.c) by a second
route: whole-sequence matrix algebra in double precision, rotary embedding as complex
multiplication, a causal mask instead of a growing cache. Written from
../shared/models/README.md, not from the C code.

usage: ref_llama.py CHECKPOINT N_STEPS [PROMPT_IDS]
Starts from BOS (id 1) and the comma-separated PROMPT_IDS, appends the argmax token
N_STEPS times, and prints:
  ids <N_STEPS + 1 ids, BOS first>
  margin <smallest gap between the best and second-best logit over the greedy steps>
  q <layer> <post-rotary query of the last position, n_heads * head_size values>
  k <layer> <post-rotary key of the last position, n_kv_heads * head_size values>
  logits <logits after the last position, vocab_size values>
  attn <layer> <softmax rows of the last position, n_heads * (positions) values>
"""
import sys

import numpy as np


def load(path):
    raw = open(path, "rb").read()
    hdr = np.frombuffer(raw[:28], dtype="<i4")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = (int(v) for v in hdr)
    shared = vocab > 0
    vocab = abs(vocab)
    w = np.frombuffer(raw[28:], dtype="<f4").astype(np.float64)
    hs = dim // n_heads
    kv_dim = n_kv * hs
    shapes = [
        ("emb", (vocab, dim)),
        ("att_norm", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)),
        ("wv", (n_layers, kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("ffn_norm", (n_layers, dim)),
        ("w1", (n_layers, hidden, dim)),
        ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)),
        ("final_norm", (dim,)),
        ("rope_unused", (seq_len * hs,)),
    ]
    if not shared:
        shapes.append(("cls", (vocab, dim)))
    p = {}
    off = 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        p[name] = w[off:off + n].reshape(shape)
        off += n
    assert off == w.size, "checkpoint size does not match its header"
    if shared:
        p["cls"] = p["emb"]
    cfg = dict(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, hs=hs)
    return cfg, p


def rmsnorm(x, g):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * g


def rotate(x, hs):
    """x: [T, n, hs]; pairs (2m, 2m+1) as complex numbers times exp(i * pos * freq_m)."""
    t = x.shape[0]
    freq = 10000.0 ** (-np.arange(0, hs, 2) / hs)
    rot = np.exp(1j * np.outer(np.arange(t), freq))  # [T, hs/2]
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * rot[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = z.real
    out[..., 1::2] = z.imag
    return out


def forward(cfg, p, ids):
    """Whole-sequence forward pass; returns logits [T, vocab] and per-layer q, k."""
    t = len(ids)
    hs, nh, nkv = cfg["hs"], cfg["n_heads"], cfg["n_kv"]
    x = p["emb"][ids]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    qs, ks, rows = [], [], []
    for l in range(cfg["n_layers"]):
        xb = rmsnorm(x, p["att_norm"][l])
        q = rotate((xb @ p["wq"][l].T).reshape(t, nh, hs), hs)
        k = rotate((xb @ p["wk"][l].T).reshape(t, nkv, hs), hs)
        v = (xb @ p["wv"][l].T).reshape(t, nkv, hs)
        qs.append(q)
        ks.append(k)
        kk = np.repeat(k, nh // nkv, axis=1)  # query head h reads KV head h // group
        vv = np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("thd,uhd->htu", q, kk) / np.sqrt(hs) + mask
        a = np.exp(s - s.max(axis=-1, keepdims=True))
        a /= a.sum(axis=-1, keepdims=True)
        rows.append(a[:, -1, :])
        o = np.einsum("htu,uhd->thd", a, vv).reshape(t, nh * hs)
        x = x + o @ p["wo"][l].T
        xb = rmsnorm(x, p["ffn_norm"][l])
        h1 = xb @ p["w1"][l].T
        x = x + (h1 / (1.0 + np.exp(-h1)) * (xb @ p["w3"][l].T)) @ p["w2"][l].T
    logits = rmsnorm(x, p["final_norm"]) @ p["cls"].T
    return logits, qs, ks, rows


def main():
    cfg, p = load(sys.argv[1])
    n_steps = int(sys.argv[2])
    ids = [1]
    if len(sys.argv) > 3 and sys.argv[3]:
        ids += [int(i) for i in sys.argv[3].split(",")]
    margin = np.inf
    for _ in range(n_steps):
        logits, _, _, _ = forward(cfg, p, ids)
        top2 = np.sort(logits[-1])[-2:]
        margin = min(margin, top2[1] - top2[0])
        ids.append(int(np.argmax(logits[-1])))
    logits, qs, ks, rows = forward(cfg, p, ids)
    fmt = lambda a: " ".join("%.9g" % v for v in np.ravel(a))
    print("ids", " ".join(str(i) for i in ids))
    print("margin %.9g" % margin)
    for l in range(cfg["n_layers"]):
        print("q", l, fmt(qs[l][-1]))
        print("k", l, fmt(ks[l][-1]))
    print("logits", fmt(logits[-1]))
    for l in range(cfg["n_layers"]):
        print("attn", l, fmt(rows[l]))


if __name__ == "__main__":
    main()
