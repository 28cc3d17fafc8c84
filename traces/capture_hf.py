#!/usr/bin/env python3
"""capture_hf.py - records a kvtrace v1 file (traces/FORMAT.md) from a HuggingFace
transformers causal language model, for `kvsim run`.

    python3 traces/capture_hf.py --model meta-llama/Llama-3.2-1B \\
        --prompt "Once upon a time" --max-new-tokens 512 -o trace.h5

What it does, in order:
  1. loads the model (transformers >= 4.53, see MIN_TRANSFORMERS) in --dtype on --device
     and refuses what it cannot capture exactly: sliding-window layers, logit soft-capping,
     attention sinks, anything whose attention does not go through the registry;
  2. generates --max-new-tokens after the prompt with the model's usual attention (greedy
     at --temperature 0, else sampling with --top-p from --seed);
  3. runs ONE teacher-forced forward pass over prompt + generation with the attention
     function "kvsim_capture" registered in transformers' AttentionInterface. Models call
     it as attention_fn(module, query, key, value, attention_mask, scaling=..., dropout=...,
     **kwargs), query [1, n_heads, T, head_dim] after the rotary embedding, key and value
     [1, n_kv_heads, T, head_dim] before any GQA repeat. Per layer it writes q, k, v to the
     trace (float16, or float32 with --float32), and with --attn the softmax rows, then
     hands the call on to the model's usual function ("sdpa") for the output. Only one
     tensor of one layer (or one block of rows) is on the host at a time;
  4. with --check N: one more forward pass over the first N tokens, each layer through the
     model's own eager attention (the weights output_attentions returns), whose weights
     are compared with the float32 rows kvsim computes from the q, k the layer got, and
     those q, k with the STORED q, k; one line per layer; exit status 1 when an entry is
     further off than rounding in the model's dtype explains (Check, check_bound).

Everything transformers-specific is in HFBackend (loading, registering the function,
selecting it, reading the config); the rest talks to a backend object, so the tool is
tested on machines without transformers with a PyTorch llama2.c model
(tests/torch_llama2c.py, tests/test_capture_hf.py).

Exit status: 0 ok, 1 runtime failure or failed --check, 2 usage error. Errors are one line
on stderr; progress goes to stderr.
"""
import argparse
import math
import os
import sys
import time

import h5py
import numpy as np
import torch

MIN_TRANSFORMERS = (4, 53)    # AttentionInterface + AttentionMaskInterface (masking_utils)
CAPTURE_NAME = "kvsim_capture"
CHECK_NAME = "kvsim_check"
PROG = "capture_hf.py"

# Significand bits (implicit bit included) of the model dtypes: unit roundoff u = 2^-bits.
SIGNIFICAND_BITS = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
FLOAT16_MAX = 65504.0
ROW_BLOCK = 128               # rows of one head computed and written at a time (--attn)


class CaptureError(Exception):
    """A runtime failure: one line for the user, exit status 1."""


class UsageError(Exception):
    """A usage error: one line for the user, exit status 2."""


_progress_open = False


def progress(msg):
    """Rewrites the progress line on stderr."""
    global _progress_open
    sys.stderr.write(f"\r{PROG}: {msg}\033[K")
    sys.stderr.flush()
    _progress_open = True


def end_progress():
    """Ends the progress line, if one is open, so the next message starts a line."""
    global _progress_open
    if _progress_open:
        sys.stderr.write("\n")
        _progress_open = False


# --------------------------------------------------------------------------- the writer

class TraceWriter:
    """Writes a kvtrace v1 file with h5py, one dataset of one layer at a time.

    The file is written to PATH.partial and renamed to PATH by finish(); abort() removes
    it. host_bytes_peak is the most bytes of q/k/v/rows arrays the writer held on the host
    at once (every host array it makes goes through _host/_release)."""

    def __init__(self, path, store_f16):
        self.path = path
        self.partial = path + ".partial"
        self.store = np.float16 if store_f16 else np.float32
        self.store_torch = torch.float16 if store_f16 else torch.float32
        try:
            # HDF5 1.8 format: metadata with checksums, readable by HDF5 1.10 (kvsim's).
            self.f = h5py.File(self.partial, "w", libver=("v108", "v108"))
        except OSError as e:
            raise CaptureError(f"{path}: cannot create ({e})") from None
        self.host_bytes = 0
        self.host_bytes_peak = 0

    def _host(self, tensor):
        """tensor (any device, any float dtype) as a numpy array of the stored dtype."""
        x = tensor.detach()
        if self.store == np.float16:
            big = float(x.abs().max()) if x.numel() else 0.0
            if not math.isfinite(big) or big > FLOAT16_MAX:
                raise CaptureError(f"a value of magnitude {big:g} does not fit float16 "
                                   "(largest 65504): use --float32")
        arr = np.empty(tuple(x.shape), dtype=self.store)
        arr[...] = x.to(device="cpu", dtype=self.store_torch).numpy()
        self.host_bytes += arr.nbytes
        self.host_bytes_peak = max(self.host_bytes_peak, self.host_bytes)
        return arr

    def _release(self, arr):
        self.host_bytes -= arr.nbytes

    def write_vectors(self, layer, name, tensor):
        """/layers/<layer>/<name> = tensor [heads, T, head_dim]."""
        n, t, d = tensor.shape
        arr = self._host(tensor)
        self.f.create_dataset(f"layers/{layer}/{name}", data=arr, chunks=(1, min(t, 256), d),
                              compression="gzip", compression_opts=4, shuffle=True)
        self._release(arr)
        del arr

    def write_rows(self, layer, q, k, scale, precision):
        """/layers/<layer>/attn [H, T, T]: rows p_t[j], j <= t, of every query head from
        q [H, T, D] and k [G, T, D]: logits scale * q.k in float32, softmax in float32,
        rounded to `precision` (the model's dtype, as its eager attention does before
        weighting the values), then to the stored dtype. Computed on q's device, written
        ROW_BLOCK rows of one head at a time; tiles above the diagonal are never written."""
        n_h, t_len, _ = q.shape
        group = n_h // k.shape[0]
        tile = min(t_len, 128)
        ds = self.f.create_dataset(f"layers/{layer}/attn", shape=(n_h, t_len, t_len),
                                   dtype=self.store, chunks=(1, tile, tile),
                                   compression="gzip", compression_opts=4, shuffle=True)
        for h in range(n_h):
            kh = k[h // group].float()
            for t0 in range(0, t_len, ROW_BLOCK):
                t1 = min(t0 + ROW_BLOCK, t_len)
                p = causal_softmax(q[h, t0:t1].float(), kh[:t1], scale, t0).to(precision)
                arr = self._host(p)
                ds[h, t0:t1, :t1] = arr
                self._release(arr)
                del arr

    def write_tokens(self, ids, texts):
        self.f.create_dataset("tokens", data=np.asarray(ids, dtype=np.int32))
        if texts is not None:
            self.f.create_dataset("token_text", data=texts, dtype=h5py.string_dtype("utf-8"))

    def write_attrs(self, attrs):
        for name, value in attrs.items():
            if value is not None:
                self.f.attrs[name] = value

    def finish(self):
        self.f.close()
        os.replace(self.partial, self.path)

    def abort(self):
        try:
            self.f.close()
        finally:
            if os.path.exists(self.partial):
                os.remove(self.partial)


def causal_softmax(q, k, scale, t0):
    """Rows t0..t0+len(q)-1: softmax over j <= t of scale * q_t.k_j, float32, zeros above
    the diagonal. q [n, D] and k [t1, D] float32 (t1 = t0 + n)."""
    x = (q @ k.T) * scale
    t = torch.arange(t0, t0 + q.shape[0], device=q.device)[:, None]
    j = torch.arange(k.shape[0], device=q.device)[None, :]
    x = x.masked_fill(j > t, float("-inf"))
    return torch.softmax(x, dim=-1)


# --------------------------------------------------------------------------- the capture

# Keyword arguments some models pass to the attention function that change what it
# computes; a trace of q and k cannot express them.
UNSUPPORTED_KWARGS = {
    "sliding_window": "sliding-window attention",
    "softcap": "attention logit soft-capping",
    "s_aux": "attention sinks (s_aux)",
    "sinks": "attention sinks",
}


class Capture:
    """The registered attention function. Inactive, it only calls base (the model's usual
    attention). Active (one teacher-forced pass), it checks that the call is plain causal
    softmax attention, writes the layer's q, k, v (and rows) and then calls base."""

    def __init__(self, writer, n_layers, base, rows, precision):
        self.writer = writer
        self.n_layers = n_layers
        self.base = base
        self.rows = rows
        self.precision = precision
        self.active = False
        self.layers = []           # layer indices in the order they were written
        self.geometry = None       # (n_heads, n_kv_heads, head_dim, T)
        self.scale = None
        self.started = time.monotonic()

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                 **kwargs):
        if self.active:
            self.record(module, query, key, value, attention_mask, scaling, dropout, kwargs)
        return self.base(module, query, key, value, attention_mask, scaling=scaling,
                         dropout=dropout, **kwargs)

    def refuse(self, what):
        raise CaptureError(f"cannot capture this model exactly: {what}")

    def record(self, module, query, key, value, mask, scaling, dropout, kwargs):
        layer = getattr(module, "layer_idx", None)
        layer = len(self.layers) if layer is None else int(layer)
        for name, what in UNSUPPORTED_KWARGS.items():
            if kwargs.get(name) is not None:
                self.refuse(f"{what} ({name} = {kwargs[name]}) in layer {layer}")
        if kwargs.get("is_causal", getattr(module, "is_causal", True)) is False:
            self.refuse(f"layer {layer} is not causal")
        if dropout:
            self.refuse(f"attention dropout {dropout} (the model is in training mode)")
        if query.dim() != 4 or key.dim() != 4 or query.shape[0] != 1:
            self.refuse(f"layer {layer}: query of shape {tuple(query.shape)}, expected "
                        "[1, heads, T, head_dim]")
        _, n_h, t_len, d = query.shape
        n_kv = key.shape[1]
        if key.shape[2] != t_len or key.shape[3] != d or value.shape != key.shape:
            self.refuse(f"layer {layer}: key {tuple(key.shape)} and value "
                        f"{tuple(value.shape)} do not match query {tuple(query.shape)} "
                        "(a KV cache in use, or a different value head size)")
        if n_h % n_kv:
            self.refuse(f"{n_h} query heads are not a multiple of {n_kv} KV heads")
        scale = float(scaling) if scaling is not None else d ** -0.5
        geometry = (n_h, n_kv, d, t_len)
        if self.geometry is None:
            self.geometry, self.scale = geometry, scale
        elif geometry != self.geometry or scale != self.scale:
            self.refuse(f"layer {layer} has heads/head_dim/scale {geometry[:3]}, {scale:g}, "
                        f"layer {self.layers[0]} {self.geometry[:3]}, {self.scale:g}: kvtrace "
                        "has one geometry")
        if layer in self.layers or layer != len(self.layers):
            self.refuse(f"layer {layer} called out of order (after {self.layers})")
        check_causal_mask(mask, t_len, layer, self.refuse)
        w = self.writer
        w.write_vectors(layer, "q", query[0])
        w.write_vectors(layer, "k", key[0])
        w.write_vectors(layer, "v", value[0])
        if self.rows:
            w.write_rows(layer, query[0], key[0], scale, self.precision)
        self.layers.append(layer)
        progress(f"layer {layer + 1}/{self.n_layers} written "
                 f"({time.monotonic() - self.started:.1f} s)")


def check_causal_mask(mask, t_len, layer, refuse):
    """mask: None (the function's causal default), or a boolean (True = attend) or additive
    (0 = attend, very negative = masked) tensor [B, 1 or H, T, >= T]; it must allow exactly
    j <= t. Checked in blocks of rows, so it never builds a T x T tensor of its own."""
    if mask is None:
        return
    if not torch.is_tensor(mask) or mask.dim() != 4 or mask.shape[-2] != t_len \
            or mask.shape[-1] < t_len:
        refuse(f"layer {layer}: attention mask of type {type(mask).__name__}"
               f"{tuple(mask.shape) if torch.is_tensor(mask) else ''} is not a [B, H, T, T] "
               "tensor")
    m = mask[0, :, :, :t_len]
    for t0 in range(0, t_len, 1024):
        b = m[:, t0:t0 + 1024]
        if b.dtype == torch.bool:
            allowed = b
        else:
            allowed = b == 0
            if not bool(torch.all(allowed | (b <= -1e4))):
                refuse(f"layer {layer}: the attention mask adds finite biases (ALiBi or "
                       "similar), not a plain causal mask")
        t = torch.arange(t0, t0 + b.shape[1], device=b.device)[:, None]
        j = torch.arange(t_len, device=b.device)[None, :]
        if not bool(torch.all(allowed == (j <= t))):
            refuse(f"layer {layer}: the attention mask is not plain causal (padding, "
                   "sliding window or a prefix-LM mask)")


# --------------------------------------------------------------------------- --check

def check_bound(p, x, absdot, precision, head_dim):
    """Largest |p_model - p| rounding explains, per entry of rows p (float32 softmax of the
    float32 logits x = scale * q.k of the model's own q, k; absdot = scale * |q|.|k|).

    The model's eager attention rounds its logits to its dtype (u = 2^-bits) twice (the
    product, the scaling): |dx| <= (2u + u^2) |x|; float32 dot products of head_dim terms
    in another order differ by <= 2 * head_dim * 2^-24 * absdot. With delta the row's
    largest dx, softmax(x + dx) / softmax(x) lies in [e^-2delta, e^2delta], and the final
    rounding to the dtype adds u: |p_model - p| <= p ((1 + u) e^(2 delta) - 1), plus 1e-6
    for the float32 exponentials."""
    u = 2.0 ** -SIGNIFICAND_BITS[precision]
    dx = (2 * u + u * u) * x.abs() + 2 * head_dim * 2.0 ** -24 * absdot
    delta = torch.where(torch.isfinite(x), dx, torch.zeros_like(dx)).amax(dim=-1, keepdim=True)
    return p * ((1 + u) * torch.exp(2 * delta) - 1) + 1e-6


# Stored q, k against the check pass's: a pass over fewer tokens runs its matrix products
# in other shapes, BLAS may round them differently, and the differences spread through the
# layers: up to 7e-7 of the largest value by layer 5 of float32 stories260K, one bfloat16
# ulp of the largest values by layer 6 of bfloat16 stories15M. The limit is 2^-10 of the
# largest value, or 8 roundings in the model's or the storage's precision where those are
# coarser; a wrong capture (another layer, head order, position) is off by the values.
STORED_LIMIT_FLOOR = 2.0 ** -10
STORED_LIMIT_ROUNDINGS = 8


class Check:
    """The attention function of the --check pass over the first n tokens (registered as
    "kvsim_check"). Each layer calls the model's own eager attention (the
    eager_attention_forward of the attention module's modeling file, which transformers
    models define) on the q, k it is given, and compares
      1. its weights with the float32 rows kvsim computes from those q, k (check_bound);
      2. those q, k with the trace's stored q, k of positions 0..n-1, within
         max(STORED_LIMIT_FLOOR, STORED_LIMIT_ROUNDINGS roundings in the model's or the
         storage's precision, whichever is coarser) of the largest value, and the scaling
         it is given with the stored softmax_scale."""

    def __init__(self, f, n, precision, store_f16, out):
        self.f, self.n, self.precision, self.out = f, n, precision, out
        u_store = 2.0 ** -11 if store_f16 else 2.0 ** -24
        self.u_stored = max(2.0 ** -SIGNIFICAND_BITS[precision], u_store)
        self.ok = True
        self.layers = 0

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                 **kwargs):
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise CaptureError(f"--check: {type(module).__module__} has no "
                               "eager_attention_forward to compare with")
        out, weights = eager(module, query, key, value, attention_mask, scaling=scaling,
                             dropout=dropout, **kwargs)
        layer = getattr(module, "layer_idx", None)
        self.compare(self.layers if layer is None else int(layer), query[0], key[0],
                     weights[0], scaling if scaling is not None else query.shape[-1] ** -0.5)
        self.layers += 1
        return out, weights

    def compare(self, layer, query, key, weights, scale):
        n = self.n
        q = query.detach().to("cpu", torch.float32)
        k = key.detach().to("cpu", torch.float32)
        stored_q = torch.from_numpy(self.f[f"layers/{layer}/q"][:, :n, :].astype(np.float32))
        stored_k = torch.from_numpy(self.f[f"layers/{layer}/k"][:, :n, :].astype(np.float32))
        limit = max(STORED_LIMIT_FLOOR, STORED_LIMIT_ROUNDINGS * self.u_stored) * max(
            float(q.abs().max()), float(k.abs().max()))
        stored = max(float((stored_q - q).abs().max()), float((stored_k - k).abs().max())) \
            if stored_q.shape == q.shape and stored_k.shape == k.shape else math.inf
        kr = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        x = (scale * (q @ kr.transpose(1, 2))).masked_fill(~causal, float("-inf"))
        absdot = scale * (q.abs() @ kr.abs().transpose(1, 2))
        p = torch.softmax(x, dim=-1)
        diff = (weights.detach().to("cpu", torch.float32) - p).abs().masked_fill(~causal, 0)
        ratio = float((diff / check_bound(p, x, absdot, self.precision, q.shape[-1])).max())
        stored_scale = float(self.f.attrs["softmax_scale"])
        same_scale = abs(stored_scale - scale) <= 1e-6 * scale
        good = ratio <= 1 and stored <= limit and same_scale
        self.ok &= good
        if not same_scale:
            print(f"check: layer {layer}: scaling {scale:.9g}, the trace's softmax_scale "
                  f"{stored_scale:.9g}: FAILED", file=self.out)
        print(f"check: layer {layer}: eager weights vs kvsim's rows: largest |difference| "
              f"{float(diff.max()):.3g} ({ratio:.2g} of its bound); stored q, k vs the "
              f"model's: {stored:.3g} ({stored / limit:.2g} of its limit): "
              f"{'ok' if good else 'FAILED'}", file=self.out)


def run_check(backend, path, ids, n, precision, store_f16, out=None):
    """Step 4 of the module docstring: one forward pass over ids[:n] through Check; prints
    one line per layer; returns True when every layer is within its bounds."""
    out = out or sys.stdout
    print(f"check: rows 0..{n - 1}, model dtype {DTYPE_NAMES[precision]} (u = 2^-"
          f"{SIGNIFICAND_BITS[precision]}); bound per entry p ((1 + u) e^(2 delta) - 1) + "
          "1e-6, delta the row's logit rounding (capture_hf.py: check_bound)", file=out)
    with h5py.File(path, "r") as f:
        check = Check(f, n, precision, store_f16, out)
        backend.register(CHECK_NAME, check, mask="eager")
        backend.forward(ids[:n], CHECK_NAME)
    if check.layers != backend.n_layers:
        raise CaptureError(f"--check: {check.layers} of {backend.n_layers} layers called the "
                           "registry")
    return check.ok


# --------------------------------------------------------------------------- the backends

def version_tuple(text):
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class HFBackend:
    """A transformers model: the only code that touches transformers.

    Interface every backend offers (tests/torch_llama2c.py has the other one):
      name, revision, dtype, device, n_layers, provenance (dict of root attributes);
      unsupported() -> None or what cannot be captured; encode(text) -> ids;
      token_texts(ids) -> list of str or None; generate(ids, max_new, temperature, top_p,
      seed) -> ids; register(name, fn, mask="sdpa" or "eager"); base_attention;
      forward(ids, attn_name): a pass without KV cache through the function attn_name."""

    def __init__(self, name, revision, dtype, device):
        try:
            import transformers
            from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
            from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
        except ImportError as e:
            need = ".".join(map(str, MIN_TRANSFORMERS))
            raise CaptureError(f"transformers >= {need} is needed ({e}): pip install "
                               f"'transformers>={need}'") from None
        if version_tuple(transformers.__version__) < MIN_TRANSFORMERS:
            raise CaptureError(f"transformers {transformers.__version__} is too old: "
                               f"{'.'.join(map(str, MIN_TRANSFORMERS))} or newer is needed")
        dtype_arg = "dtype" if version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
            self.model = AutoModelForCausalLM.from_pretrained(
                name, revision=revision, attn_implementation="sdpa", **{dtype_arg: dtype})
        except (OSError, ValueError) as e:
            raise CaptureError(f"cannot load {name}: {str(e).splitlines()[0]}") from None
        self.model.to(device).eval()
        self.config = self.model.config
        self.name, self.dtype, self.device = name, dtype, device
        self.revision = revision or getattr(self.config, "_commit_hash", None)
        text = self.config
        if hasattr(text, "get_text_config"):      # multimodal configs nest the LM's
            text = text.get_text_config()
        self.text_config = text
        self.n_layers = int(text.num_hidden_layers)
        self._attention, self._mask = AttentionInterface, AttentionMaskInterface
        self._masks = {"sdpa": sdpa_mask, "eager": eager_mask}
        self.base_attention = AttentionInterface()["sdpa"]
        self.provenance = {"transformers_version": transformers.__version__,
                           "model_revision": self.revision}

    def unsupported(self):
        c = self.text_config
        kinds = set(getattr(c, "layer_types", None) or [])
        if kinds - {"full_attention"}:
            return f"layer types {sorted(kinds)} (only full causal attention can be captured)"
        window = getattr(c, "sliding_window", None)
        if window is not None and getattr(c, "use_sliding_window", True):
            return f"sliding-window attention (config sliding_window = {window})"
        for attr in ("attn_logit_softcapping", "alibi"):
            if getattr(c, attr, None):
                return f"{attr} = {getattr(c, attr)}"
        return None

    def encode(self, text):
        return self.tokenizer(text)["input_ids"]

    def token_texts(self, ids):
        return [self.tokenizer.decode([i]) for i in ids]

    def register(self, name, fn, mask="sdpa"):
        """Registers fn under name, with the mask function of the format fn needs: without
        one transformers passes attention_mask=None (attention_interface.md)."""
        self._attention.register(name, fn)
        self._mask.register(name, self._masks[mask])

    def _select(self, name):
        if hasattr(self.model, "set_attn_implementation"):
            self.model.set_attn_implementation(name)
        else:
            self.model.config._attn_implementation = name

    def generate(self, ids, max_new, temperature, top_p, seed):
        torch.manual_seed(seed)
        x = torch.tensor([ids], device=self.device)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) \
            if temperature > 0 else dict(do_sample=False)
        with torch.no_grad():
            out = self.model.generate(x, attention_mask=torch.ones_like(x),
                                      max_new_tokens=max_new, **sampling)
        return out[0].tolist()

    def forward(self, ids, attn_name):
        self._select(attn_name)
        try:
            with torch.no_grad():   # logits of the last position only: T x vocab is large
                self.model(torch.tensor([ids], device=self.device), use_cache=False,
                           logits_to_keep=1)
        finally:
            self._select("sdpa")


# --------------------------------------------------------------------------- the command

def build_parser():
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Generates with a HuggingFace transformers causal LM, then runs one "
                    "teacher-forced forward pass over prompt + generation and records, per "
                    "layer, the post-rotary queries, the keys and values per KV head and "
                    "(--attn) the attention rows as a kvtrace v1 file for kvsim "
                    f"(traces/FORMAT.md). Needs torch, h5py and transformers >= "
                    f"{'.'.join(map(str, MIN_TRANSFORMERS))}.",
        epilog="The prompt is the prefill (P = its tokens, BOS included when the tokenizer "
               "adds one); T = P + the generated tokens. Refused: models with "
               "sliding-window layers, logit soft-capping, attention sinks, non-causal masks "
               "or attention outside transformers' AttentionInterface. Exit status: 0 ok, 1 "
               "runtime failure or failed --check, 2 usage error.")
    p.add_argument("--model", required=True, help="model name on the Hub or local path")
    p.add_argument("--revision", help="model revision (branch, tag or commit) to load")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="file whose text is the prompt")
    src.add_argument("--prompt-ids", help="comma-separated token ids, used as they are")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="tokens to generate after the prompt (default 256)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature, 0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (default 0.9)")
    p.add_argument("--seed", type=int, default=1, help="seed of the sampler (default 1)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="dtype the model runs in (default bfloat16)")
    p.add_argument("--device", default=None,
                   help="cuda, cpu, cuda:1, ... (default cuda when available)")
    p.add_argument("--attn", action="store_true",
                   help="also store the rows /layers/<l>/attn [n_heads, T, T] (source attn, "
                        "attn_precision = --dtype): n_layers * n_heads * T^2 values; for "
                        "short traces only")
    p.add_argument("--float32", action="store_true",
                   help="store q, k, v (and rows) as float32 instead of float16")
    p.add_argument("--check", type=int, default=0, metavar="N",
                   help="after capturing, compare rows 0..N-1 with the model's own eager "
                        "attention weights and the stored q, k with the model's; exit 1 "
                        "beyond what rounding explains (the trace is kept)")
    p.add_argument("-o", "--output", required=True, help="trace to write (replaced)")
    return p


def parse_args(argv):
    parser = build_parser()

    def error(message):
        raise UsageError(message)
    parser.error = error
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UsageError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.check < 0:
        raise UsageError("--check must be >= 0")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def prompt_ids(args, backend):
    if args.prompt_ids is not None:
        try:
            ids = [int(s) for s in args.prompt_ids.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--prompt-ids {args.prompt_ids!r}: expected comma-separated "
                             "integers") from None
        return ids, None
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise CaptureError(f"{args.prompt_file}: {e.strerror}") from None
    else:
        text = args.prompt
    try:
        return backend.encode(text), text
    except ValueError as e:
        raise CaptureError(f"cannot encode the prompt: {e}") from None


def root_attrs(args, backend, capture, ids, prefill, prompt):
    n_h, n_kv, d, t_len = capture.geometry
    attrs = {
        "kvtrace_version": 1, "model": backend.name, "n_layers": backend.n_layers,
        "n_heads": n_h, "n_kv_heads": n_kv, "head_dim": d, "n_tokens": t_len,
        "prefill_len": prefill, "source": "attn" if args.attn else "qk",
        "softmax_scale": capture.scale,
        "dtype_bytes": torch.tensor([], dtype=backend.dtype).element_size(),
        "generator": PROG, "model_dtype": DTYPE_NAMES[backend.dtype],
        "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
        "max_new_tokens": args.max_new_tokens, "prompt": prompt,
        "prompt_ids": ",".join(map(str, ids[:prefill])),
        "torch_version": str(torch.__version__), "device": str(args.device),
    }
    if args.attn:
        attrs["attn_precision"] = DTYPE_NAMES[backend.dtype]
    attrs.update(backend.provenance)
    return attrs


def capture(args, backend):
    """Steps 1-3 of the module docstring; returns the token ids and the Capture."""
    why = backend.unsupported()
    if why:
        raise CaptureError(f"cannot capture {backend.name} exactly: {why}")
    ids, prompt = prompt_ids(args, backend)
    if not ids:
        raise UsageError("the prompt has no tokens")
    progress(f"generating up to {args.max_new_tokens} tokens after {len(ids)} prompt tokens")
    full = backend.generate(ids, args.max_new_tokens, args.temperature, args.top_p, args.seed)
    if full[:len(ids)] != list(ids) or len(full) <= len(ids):
        raise CaptureError("the model generated no token after the prompt")
    if args.check > len(full):
        raise UsageError(f"--check {args.check} exceeds the {len(full)} tokens captured")
    writer = TraceWriter(args.output, store_f16=not args.float32)
    try:
        cap = Capture(writer, backend.n_layers, backend.base_attention, args.attn,
                      backend.dtype)
        backend.register(CAPTURE_NAME, cap)
        cap.active = True
        progress(f"teacher-forced pass over T = {len(full)} tokens")
        backend.forward(full, CAPTURE_NAME)
        cap.active = False
        if len(cap.layers) != backend.n_layers:
            raise CaptureError(
                f"cannot capture {backend.name} exactly: only {len(cap.layers)} of "
                f"{backend.n_layers} layers called transformers' attention-function registry "
                "(a model with its own attention code)")
        writer.write_tokens(full, backend.token_texts(full))
        writer.write_attrs(root_attrs(args, backend, cap, full, len(ids), prompt))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    end_progress()
    return full, cap


def exact_float32_matmul():
    """float32 math stays float32 on the GPU (no TF32, no reduced-precision reductions):
    the rows and the --check bound assume it. Flags a torch version lacks are skipped."""
    torch.backends.cudnn.allow_tf32 = False
    for flag in ("allow_tf32", "allow_fp16_reduced_precision_reduction",
                 "allow_bf16_reduced_precision_reduction"):
        try:
            setattr(torch.backends.cuda.matmul, flag, False)
        except (AssertionError, AttributeError):
            pass


def main(argv=None, backend_factory=None):
    """Runs the command; returns the exit status. backend_factory(args) -> backend
    (default: HFBackend) lets tests run it on another PyTorch model."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        dtype = getattr(torch, args.dtype)
        exact_float32_matmul()
        make = backend_factory or (lambda a: HFBackend(a.model, a.revision, dtype, a.device))
        backend = make(args)
        full, _ = capture(args, backend)
        print(f"{PROG}: wrote {args.output}: T = {len(full)} tokens, "
              f"{backend.n_layers} layers", file=sys.stderr)
        if args.check and not run_check(backend, args.output, full, args.check,
                                        backend.dtype, not args.float32):
            print(f"{PROG}: --check failed: the stored q, k do not reproduce the model's "
                  "attention within the rounding bound", file=sys.stderr)
            return 1
        return 0
    except SystemExit as e:          # --help
        return e.code if isinstance(e.code, int) else 0
    except UsageError as e:
        end_progress()
        print(f"{PROG}: {e}\nTry '{PROG} --help'.", file=sys.stderr)
        return 2
    except CaptureError as e:
        end_progress()
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        end_progress()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
