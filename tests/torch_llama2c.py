"""torch_llama2c.py - the llama2.c checkpoints (../shared/models/README.md) as a PyTorch
model whose attention is called the way transformers calls a registered attention
function, so traces/capture_hf.py can be tested on machines without transformers.

Written from the checkpoint README (layout, RMSNorm, interleaved rotary pairs, GQA, SwiGLU,
shared classifier), not from kvsim's C forward pass (traces/model.c).

The attention call. transformers' documentation (docs/source/en/attention_interface.md,
"Create a new attention function") gives the signature of a function registered with
AttentionInterface.register and selected by attn_implementation:

    def custom_attention(module, query, key, value, attention_mask, **kwargs)
        -> tuple[attn_output, attn_weights]

and its Llama attention calls it as

    attention_interface(self, query_states, key_states, value_states, attention_mask,
                        dropout=0.0 if not self.training else self.attention_dropout,
                        scaling=self.scaling, **kwargs)

with query [B, n_heads, T, head_dim] after the rotary embedding, key and value
[B, n_kv_heads, T, head_dim] before any GQA repeat, the module carrying layer_idx, and
the output [B, T, n_heads, head_dim]. Attention.forward below makes the same call, looking
the function up by config.attn_implementation in ATTENTION_FUNCTIONS ("eager" is the
model's own eager_attention_forward, as in transformers).

As a script it is capture_hf.py on a llama2.c checkpoint (ids only, no tokenizer):

    /usr/bin/python3 tests/torch_llama2c.py --model ../shared/models/stories15M.bin \
        --prompt-ids 1,9038,2501 --max-new-tokens 253 --dtype bfloat16 -o t.h5

dtypes: float32, bfloat16 and float16. Every matrix product runs in float32 and is rounded
to the model's dtype once, as a GPU does with float32 accumulation (Debian's CPU torch has
no float16 matmul); norms, rotary and SiLU run in float32 and are rounded back.
"""
import numpy as np
import torch
import torch.nn.functional as F

ATTENTION_FUNCTIONS = {}       # name -> function: the role of transformers' registry
ROPE_BASE = 10000.0
RMS_EPS = 1e-5
BOS = 1


def mm(a, b):
    """a @ b accumulated in float32, rounded once to a's dtype."""
    return (a.float() @ b.float()).to(a.dtype)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0,
                            **kwargs):
    """The eager attention of transformers' Llama: repeat K and V per GQA group, logits
    in the model's dtype, additive mask, softmax in float32 rounded to the dtype."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    weights = mm(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, :k.shape[-2]]
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = mm(weights, v)
    return out.transpose(1, 2).contiguous(), weights


class Config:
    def __init__(self, header, dtype):
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = header
        self.dim, self.hidden_dim, self.n_layers = dim, hidden, n_layers
        self.n_heads, self.n_kv_heads = n_heads, n_kv
        self.shared_classifier = vocab > 0
        self.vocab_size, self.seq_len = abs(vocab), seq_len
        self.head_dim = dim // n_heads
        self.dtype = dtype
        self.attn_implementation = "eager"
        self.sliding_window = None     # tests set it to see the capture refuse it


class Attention(torch.nn.Module):
    def __init__(self, cfg, layer_idx, wq, wk, wv, wo):
        super().__init__()
        self.config, self.layer_idx = cfg, layer_idx
        self.scaling = cfg.head_dim ** -0.5
        self.is_causal = True
        self.wq, self.wk, self.wv, self.wo = wq, wk, wv, wo

    def forward(self, x, cos, sin, attention_mask):
        b, t, _ = x.shape
        cfg = self.config
        q = mm(x, self.wq.T).view(b, t, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = mm(x, self.wk.T).view(b, t, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = mm(x, self.wv.T).view(b, t, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        name = cfg.attn_implementation
        fn = eager_attention_forward if name == "eager" else ATTENTION_FUNCTIONS[name]
        extra = {} if cfg.sliding_window is None else {"sliding_window": cfg.sliding_window}
        out, weights = fn(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,
                          **extra)
        return mm(out.reshape(b, t, -1), self.wo.T), weights


def rotate(x, cos, sin):
    """Rotary embedding of llama2.c: pairs (2m, 2m+1) rotated by pos / 10000^(2m/head_dim);
    x [B, heads, T, D]; cos, sin [T, D/2] float32."""
    xf = x.float()
    even, odd = xf[..., 0::2], xf[..., 1::2]
    out = torch.empty_like(xf)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out.to(x.dtype)


def rmsnorm(x, gain):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
    return (y * gain.float()).to(x.dtype)


class Llama2c(torch.nn.Module):
    def __init__(self, cfg, w):
        super().__init__()
        self.config = cfg
        self.w = w
        self.layers = [Attention(cfg, i, w["wq"][i], w["wk"][i], w["wv"][i], w["wo"][i])
                       for i in range(cfg.n_layers)]

    def rope_tables(self, t):
        """cos, sin [t, D/2]: angles in double, rounded to float32 (as llama2.c does)."""
        d = self.config.head_dim
        freq = ROPE_BASE ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        angle = np.outer(np.arange(t, dtype=np.float64), freq)
        return (torch.from_numpy(np.cos(angle).astype(np.float32)),
                torch.from_numpy(np.sin(angle).astype(np.float32)))

    def causal_mask(self, t):
        """The additive mask transformers' eager attention gets: 0 on j <= t, the dtype's
        minimum above the diagonal; [1, 1, t, t]."""
        low = torch.finfo(self.config.dtype).min
        m = torch.full((t, t), low, dtype=self.config.dtype).triu(1)
        return m[None, None]

    def forward(self, ids, output_attentions=False, attention_mask=None):
        """ids [1, T] -> logits [1, T, vocab] float32 (and the per-layer weights)."""
        w = self.w
        t = ids.shape[1]
        cos, sin = self.rope_tables(t)
        mask = self.causal_mask(t) if attention_mask is None else attention_mask
        x = w["emb"][ids]
        weights = []
        for i, layer in enumerate(self.layers):
            out, a = layer(rmsnorm(x, w["att_norm"][i]), cos, sin, mask)
            x = x + out
            h = rmsnorm(x, w["ffn_norm"][i])
            gate = F.silu(mm(h, w["w1"][i].T).float()).to(x.dtype)
            x = x + mm(gate * mm(h, w["w3"][i].T), w["w2"][i].T)
            weights.append(a)
        logits = mm(rmsnorm(x, w["final_norm"]), w["cls"].T).float()
        return (logits, tuple(weights)) if output_attentions else logits


def load(path, dtype=torch.float32):
    """The checkpoint at path (README "Header" and "Weights") in dtype."""
    with open(path, "rb") as fh:
        raw = fh.read()
    header = [int(v) for v in np.frombuffer(raw[:28], dtype="<i4")]
    cfg = Config(header, dtype)
    flat = np.frombuffer(raw[28:], dtype="<f4")
    d, hd, n_l, kv_dim = cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_kv_heads * cfg.head_dim
    shapes = [("emb", (cfg.vocab_size, d)), ("att_norm", (n_l, d)), ("wq", (n_l, d, d)),
              ("wk", (n_l, kv_dim, d)), ("wv", (n_l, kv_dim, d)), ("wo", (n_l, d, d)),
              ("ffn_norm", (n_l, d)), ("w1", (n_l, hd, d)), ("w2", (n_l, d, hd)),
              ("w3", (n_l, hd, d)), ("final_norm", (d,)),
              ("rope", (2 * cfg.seq_len * cfg.head_dim // 2,))]
    if not cfg.shared_classifier:
        shapes.append(("cls", (cfg.vocab_size, d)))
    w, at = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        w[name] = torch.from_numpy(flat[at:at + n].reshape(shape).copy()).to(dtype)
        at += n
    if at != flat.size:
        raise ValueError(f"{path}: {flat.size} floats, the header implies {at}")
    if cfg.shared_classifier:
        w["cls"] = w["emb"]
    return Llama2c(cfg, w)


class Llama2cBackend:
    """The backend interface of traces/capture_hf.py (HFBackend's docstring) for a llama2.c
    checkpoint: its registry is ATTENTION_FUNCTIONS, its base attention the eager one
    (torch 1.13 has no scaled_dot_product_attention), no tokenizer (ids only)."""

    def __init__(self, path, dtype=torch.float32, name=None):
        self.model = load(path, dtype)
        self.name = name or path.rsplit("/", 1)[-1].replace(".bin", "")
        self.revision = None
        self.dtype, self.device = dtype, "cpu"
        self.n_layers = self.model.config.n_layers
        self.base_attention = eager_attention_forward
        self.provenance = {"checkpoint": path}

    def unsupported(self):
        return None

    def encode(self, text):
        raise ValueError("no tokenizer: use --prompt-ids")

    def token_texts(self, ids):
        return None

    def register(self, name, fn, mask="sdpa"):
        ATTENTION_FUNCTIONS[name] = fn      # the mask is always the eager (additive) one

    def generate(self, ids, max_new, temperature, top_p, seed):
        """Greedy (the lowest id on a tie, as kvsim capture) or top-p sampling; a full
        forward pass per step (no KV cache: the models are tiny)."""
        gen = torch.Generator().manual_seed(seed)
        ids = list(ids)
        with torch.no_grad():
            for _ in range(max_new):
                logits = self.model(torch.tensor([ids]))[0, -1]
                if temperature == 0:
                    ids.append(int(torch.argmax(logits)))
                    continue
                p = torch.softmax(logits / temperature, dim=-1)
                sp, order = torch.sort(p, descending=True)
                keep = torch.cumsum(sp, 0) - sp < top_p
                sp = sp * keep
                ids.append(int(order[torch.multinomial(sp / sp.sum(), 1, generator=gen)]))
        return ids

    def forward(self, ids, attn_name):
        self.model.config.attn_implementation = attn_name
        try:
            with torch.no_grad():
                self.model(torch.tensor([ids]))
        finally:
            self.model.config.attn_implementation = "eager"


def main(argv=None):
    """capture_hf.py's command on a llama2.c checkpoint (--model FILE, --prompt-ids only):
    the path that runs without transformers."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "traces"))
    import capture_hf
    return capture_hf.main(argv, backend_factory=lambda a: Llama2cBackend(
        a.model, getattr(torch, a.dtype)))


if __name__ == "__main__":
    raise SystemExit(main())
