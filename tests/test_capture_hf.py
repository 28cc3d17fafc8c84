#!/usr/bin/python3
"""test_capture_hf.py - traces/capture_hf.py tested without transformers, on the PyTorch
llama2.c model of tests/torch_llama2c.py, whose attention calls the capture function with
the arguments transformers' attention-function registry passes (the signature of
transformers' docs/source/en/attention_interface.md, cited in torch_llama2c.py).

Run by tests/test_capture_hf.c (`make check`) when /usr/bin/python3 can import torch;
alone: /usr/bin/python3 tests/test_capture_hf.py [-v]. Environment: KVSIM_BIN (default
./kvsim), KVSIM_MODEL (stories260K.bin; stories15M.bin is looked for beside it),
KVSIM_CAPTURE_HF_DIR (where the stories15M pair is left for the C test's recompute with
kvsim's own rows code; default a temporary directory).

Every expected value comes from an independent route: kvsim capture (the C forward pass),
kvsim info and run (the C reader and validator), the token ids and shapes of the
checkpoints' README, or bytes counted by hand.
"""
import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import tracemalloc
import unittest

import h5py
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "traces"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import capture_hf  # noqa: E402
import torch_llama2c  # noqa: E402

KVSIM = os.environ.get("KVSIM_BIN") or os.path.join(ROOT, "kvsim")
M260K = os.environ.get("KVSIM_MODEL") or os.path.join(ROOT, "..", "shared", "models",
                                                       "stories260K.bin")
M15M = os.path.join(os.path.dirname(M260K), "stories15M.bin")
OUT = os.environ.get("KVSIM_CAPTURE_HF_DIR") or tempfile.mkdtemp(prefix="kvsim-capture-hf-")
TOOL = os.path.join(ROOT, "traces", "capture_hf.py")

# "Once upon" in the stories15M tokenizer (ids 9038, 2501) after BOS; for stories260K any
# ids of its 512-token vocabulary.
PROMPT_15M = [1, 9038, 2501]
PROMPT_260K = [1, 403, 407]


def run_tool(model_path, argv, dtype=torch.float32, backend=None):
    """capture_hf.main on the llama2.c model; returns (status, stderr text)."""
    be = backend or torch_llama2c.Llama2cBackend(model_path, dtype)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        rc = capture_hf.main(["--model", model_path] + argv, backend_factory=lambda a: be)
    return rc, err.getvalue()


def kvsim(*args):
    return subprocess.run([KVSIM] + list(args), capture_output=True, text=True)


def tol_close(got, want, rel):
    """|got - want| <= rel * max(1, max |want|): float32 rounding of two implementations
    (different summation orders) grows with the values' magnitude."""
    return float(np.abs(got - want).max()) <= rel * max(1.0, float(np.abs(want).max()))


def setUpModule():
    for path in (M260K, M15M):
        if not os.path.exists(path):
            raise RuntimeError(f"{path} is missing (set KVSIM_MODEL to stories260K.bin, "
                               "with stories15M.bin beside it)")
    if not os.access(KVSIM, os.X_OK):
        raise RuntimeError(f"{KVSIM} is not built (make kvsim)")


class EqualsKvsimCapture(unittest.TestCase):
    """The tool's trace of the float32 PyTorch model equals `kvsim capture`'s."""

    def compare(self, model, prompt, t_len, name):
        tool = os.path.join(OUT, f"{name}_tool.h5")
        ref = os.path.join(OUT, f"{name}_kvsim.h5")
        rc, err = run_tool(model, ["--prompt-ids", ",".join(map(str, prompt)),
                                   "--max-new-tokens", str(t_len - len(prompt)),
                                   "--temperature", "0", "--dtype", "float32", "--float32",
                                   "--attn", "--check", "16", "-o", tool])
        self.assertEqual(rc, 0, err)
        r = kvsim("capture", "--model", model, "--tokens", str(t_len), "--prefill",
                  str(len(prompt)), "--prompt-ids", ",".join(map(str, prompt[1:])),
                  "--temperature", "0", "--attn", "-o", ref)
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(tool, "r") as a, h5py.File(ref, "r") as b:
            np.testing.assert_array_equal(a["tokens"][:], b["tokens"][:])
            for attr in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "n_tokens",
                         "prefill_len"):
                self.assertEqual(int(a.attrs[attr]), int(b.attrs[attr]), attr)
            self.assertAlmostEqual(float(a.attrs["softmax_scale"]),
                                   float(b.attrs["softmax_scale"]), places=7)
            for layer in range(int(b.attrs["n_layers"])):
                for ds in ("q", "k", "v"):
                    got, want = a[f"layers/{layer}/{ds}"][:], b[f"layers/{layer}/{ds}"][:]
                    self.assertEqual(got.shape, want.shape, ds)
                    self.assertTrue(tol_close(got, want, 1e-5),
                                    f"layer {layer} {ds}: {np.abs(got - want).max()}")
                low = np.tril(np.ones((t_len, t_len), dtype=bool))
                got, want = a[f"layers/{layer}/attn"][:], b[f"layers/{layer}/attn"][:]
                self.assertLess(float(np.abs(got - want)[:, low].max()), 1e-5, layer)
        return tool, ref

    def test_stories15m(self):
        """No GQA (6 heads, 6 KV heads); the pair stays in OUT for the C test."""
        self.compare(M15M, PROMPT_15M, 32, "stories15M")

    def test_stories260k_gqa(self):
        """GQA: k and v stored per KV head, [4, T, 8], not repeated to 8 heads."""
        tool, _ = self.compare(M260K, PROMPT_260K, 64, "stories260K")
        with h5py.File(tool, "r") as f:
            self.assertEqual(f["layers/0/q"].shape, (8, 64, 8))
            self.assertEqual(f["layers/0/k"].shape, (4, 64, 8))
            self.assertEqual(f["layers/0/v"].shape, (4, 64, 8))


class LowPrecision(unittest.TestCase):
    """bfloat16 and float16 models: traces kvsim accepts and replays; --check passes."""

    def capture(self, dtype, name, extra=()):
        path = os.path.join(OUT, f"{name}.h5")
        be = torch_llama2c.Llama2cBackend(M260K, dtype)
        # token text as a tokenizer would give it (UTF-8), stored in /token_text
        be.token_texts = lambda ids: [f"\u00e9{i}" for i in ids]
        rc, err = run_tool(M260K, ["--prompt-ids", "1,403,407", "--max-new-tokens", "61",
                                   "--temperature", "0", "--dtype", name.split("_")[0],
                                   "--attn", "--check", "64", "-o", path] + list(extra),
                           backend=be)
        self.assertEqual(rc, 0, err)
        return path, err

    def test_bfloat16(self):
        path, err = self.capture(torch.bfloat16, "bfloat16_attn")
        self.assertIn("of its bound", err)
        with h5py.File(path, "r") as f:
            self.assertEqual(f.attrs["attn_precision"], "bfloat16")
            self.assertEqual(f.attrs["source"], "attn")
            self.assertEqual(int(f.attrs["dtype_bytes"]), 2)
            rows = f["layers/0/attn"][:].astype(np.float32)
            tokens = f["tokens"][:]
            self.assertEqual(f["token_text"][5].decode(), f"\u00e9{tokens[5]}")
            sums = np.tril(rows).sum(axis=2, dtype=np.float64)
        # the rows are bfloat16 values (float16 holds those >= 2^-14 exactly)
        normal = rows >= 2.0 ** -14
        as_bf16 = torch.from_numpy(rows).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(rows[normal], as_bf16[normal])
        info = kvsim("info", "--check", path)
        self.assertEqual(info.returncode, 0, info.stderr)
        self.assertIn("computed in bfloat16", info.stdout)
        out = os.path.join(OUT, "bf16_run")
        run = kvsim("run", "--trace", path, "--policies", "window,h2o", "--budgets", "16",
                    "-q", "--force", "--no-plot", "-o", out)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertTrue(os.path.exists(os.path.join(out, "summary.tsv")))
        # bfloat16 rounding moves row sums beyond float32's 1e-3: without the attribute
        # kvsim refuses the very same rows
        if np.abs(sums - 1).max() > 1e-3:
            with h5py.File(path, "a") as f:
                del f.attrs["attn_precision"]
            info = kvsim("info", "--check", path)
            self.assertEqual(info.returncode, 1)
            self.assertIn("expected 1 within 1e-3", info.stderr)

    def test_float16(self):
        path, _ = self.capture(torch.float16, "float16_attn")
        info = kvsim("info", "--check", path)
        self.assertEqual(info.returncode, 0, info.stderr)
        self.assertIn("computed in float16", info.stdout)
        ref = os.path.join(OUT, "float16_ref.h5")
        r = kvsim("capture", "--model", M260K, "--tokens", "64", "--prefill", "3",
                  "--prompt-ids", "403,407", "--temperature", "0", "-o", ref)
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(path, "r") as a, h5py.File(ref, "r") as b:
            self.assertEqual(a["layers/0/q"].dtype, np.float16)
            # q of layer 0 of the prompt positions: float16 rounding of a few operations
            got, want = a["layers/0/q"][:, :3].astype(np.float32), b["layers/0/q"][:, :3]
            self.assertTrue(tol_close(got, want, 1e-2), np.abs(got - want).max())
            self.assertFalse(tol_close(got, want, 1e-6))    # it is float16, not float32

    def test_check_catches_a_wrong_capture(self):
        """--check fails when the stored keys are not the ones the model used: here the
        KV heads of every layer stored in reverse order."""
        original = capture_hf.TraceWriter.write_vectors

        def swapped(self, layer, name, tensor):
            original(self, layer, name, tensor.flip(0) if name == "k" else tensor)
        capture_hf.TraceWriter.write_vectors = swapped
        try:
            rc, err = run_tool(M260K, ["--prompt-ids", "1,403,407", "--max-new-tokens", "29",
                                       "--temperature", "0", "--dtype", "bfloat16",
                                       "--check", "32", "-o", os.path.join(OUT, "bad.h5")],
                               dtype=torch.bfloat16)
        finally:
            capture_hf.TraceWriter.write_vectors = original
        self.assertEqual(rc, 1, err)
        self.assertIn("FAILED", err)
        self.assertIn("--check failed", err)


    def test_check_catches_other_attention(self):
        """--check fails on a model whose eager attention is not softmax(scaling * q.k): here
        its logits carry a hidden extra factor 1.05 (as a temperature or an unrecorded
        query scale would), while the stored q, k are right."""
        original = torch_llama2c.eager_attention_forward

        def tempered(module, query, key, value, mask, scaling, **kwargs):
            return original(module, query, key, value, mask, scaling=scaling * 1.05, **kwargs)
        torch_llama2c.eager_attention_forward = tempered
        try:
            rc, err = run_tool(M260K, ["--prompt-ids", "1,403,407", "--max-new-tokens", "29",
                                       "--temperature", "0", "--dtype", "bfloat16",
                                       "--check", "32", "-o", os.path.join(OUT, "temp.h5")],
                               dtype=torch.bfloat16)
        finally:
            torch_llama2c.eager_attention_forward = original
        self.assertEqual(rc, 1, err)
        failed = [line for line in err.splitlines() if line.endswith("FAILED")]
        self.assertTrue(failed, err)
        self.assertIn("stored q, k vs the model's: 0 (0 of its limit)", failed[0])


class StubTransformers(unittest.TestCase):
    """HFBackend, the tool's only transformers code, run as a script against
    tests/stub_transformers: transformers' documented API backed by the llama2.c model.
    It shows the glue runs as written (loading, tokenizing, registering and selecting the
    function, the config checks, version handling); not how real transformers behaves."""

    def run_script(self, argv, **env):
        full = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests", "stub_transformers"))
        full.update(env)
        return subprocess.run(["/usr/bin/python3", TOOL, "--model", M260K] + argv,
                              capture_output=True, text=True, env=full)

    def test_capture(self):
        path = os.path.join(OUT, "stub.h5")
        for version in ("4.56.0", "4.53.0"):        # dtype= and torch_dtype= spellings
            r = self.run_script(["--prompt", "Once upon", "--max-new-tokens", "20",
                                 "--temperature", "0", "--dtype", "float32", "--float32",
                                 "--check", "8", "--device", "cpu", "-o", path],
                                STUB_TRANSFORMERS_VERSION=version)
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("check: layer 4:", r.stdout)
        prompt = [1] + [3 + ord(c) % 500 for c in "Once upon"]      # the stub's tokenizer
        ref = os.path.join(OUT, "stub_kvsim.h5")
        k = kvsim("capture", "--model", M260K, "--tokens", str(len(prompt) + 20),
                  "--prefill", str(len(prompt)), "--prompt-ids",
                  ",".join(map(str, prompt[1:])), "--temperature", "0", "-o", ref)
        self.assertEqual(k.returncode, 0, k.stderr)
        with h5py.File(path, "r") as a, h5py.File(ref, "r") as b:
            np.testing.assert_array_equal(a["tokens"][:], b["tokens"][:])
            self.assertEqual(int(a.attrs["prefill_len"]), len(prompt))
            self.assertEqual(a.attrs["prompt"], "Once upon")
            self.assertEqual(a.attrs["transformers_version"], "4.53.0")
            self.assertEqual(a.attrs["model_revision"], "stub-revision")
            self.assertEqual(a["token_text"][0].decode(), "<s>")
            self.assertTrue(tol_close(a["layers/4/k"][:], b["layers/4/k"][:], 1e-5))
        self.assertEqual(kvsim("info", "--check", path).returncode, 0)

    def test_refusals(self):
        out = os.path.join(OUT, "stub_refused.h5")
        cases = [
            ({"STUB_SLIDING_WINDOW": "4096"}, M260K,
             f"capture_hf.py: cannot capture {M260K} exactly: sliding-window attention "
             "(config sliding_window = 4096)"),
            ({"STUB_TRANSFORMERS_VERSION": "4.50.0"}, M260K,
             "capture_hf.py: transformers 4.50.0 is too old: 4.53 or newer is needed"),
            ({}, "/nonexistent/model", "capture_hf.py: cannot load /nonexistent/model: "
             "/nonexistent/model is not a local folder and is not a valid model identifier"),
        ]
        for env, model, want in cases:
            r = self.run_script(["--prompt", "Once", "--max-new-tokens", "4", "--device",
                                 "cpu", "-o", out, "--model", model], **env)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertEqual(r.stderr.replace("\r", "\n").strip().splitlines()[-1], want)
            self.assertFalse(os.path.exists(out))


class LayerByLayer(unittest.TestCase):
    """The writer holds one tensor of one layer on the host at a time and writes each layer
    before the next layer's attention runs."""

    def test_memory_bound(self):
        prompt = [1] + [int(i) for i in np.random.default_rng(1).integers(3, 32000, 249)]
        t_len = 256
        be = torch_llama2c.Llama2cBackend(M15M, torch.float32)
        events = []
        base = be.base_attention

        def spy_base(module, *args, **kwargs):
            events.append(("attention", module.layer_idx))
            return base(module, *args, **kwargs)
        be.base_attention = spy_base
        original = capture_hf.TraceWriter.write_vectors

        def spy_write(self, layer, name, tensor):
            events.append((name, layer))
            original(self, layer, name, tensor)
        capture_hf.TraceWriter.write_vectors = spy_write
        peaks = {}
        forward = be.forward

        def measured_forward(ids, name):
            tracemalloc.start()
            try:
                forward(ids, name)
                peaks["traced"] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        be.forward = measured_forward
        writers = []
        init = capture_hf.TraceWriter.__init__

        def keep(self, *a, **k):
            init(self, *a, **k)
            writers.append(self)
        capture_hf.TraceWriter.__init__ = keep
        try:
            rc, err = run_tool(M15M, ["--prompt-ids", ",".join(map(str, prompt)),
                                      "--max-new-tokens", str(t_len - len(prompt)),
                                      "--temperature", "0", "--float32", "--dtype", "float32",
                                      "-o", os.path.join(OUT, "memory.h5")], backend=be)
        finally:
            capture_hf.TraceWriter.write_vectors = original
            capture_hf.TraceWriter.__init__ = init
        self.assertEqual(rc, 0, err)
        # stories15M: 6 heads of 48, 6 layers; float32: one layer's q is 6*256*48*4 bytes
        q_bytes = 6 * t_len * 48 * 4
        layer_bytes = 3 * q_bytes                       # q, k, v (no GQA)
        self.assertEqual(writers[0].host_bytes_peak, q_bytes)
        self.assertLess(peaks["traced"], 1.5 * layer_bytes)   # whole trace: 6 layers
        want = []
        for layer in range(6):
            want += [("q", layer), ("k", layer), ("v", layer), ("attention", layer)]
        self.assertEqual(events, want)


class Refusals(unittest.TestCase):
    """What the tool cannot capture exactly is refused with one line naming it, and no
    trace (nor a .partial file) is left behind; usage errors exit 2."""

    def refused(self, argv, want, backend=None, status=1):
        path = os.path.join(OUT, "refused.h5")
        for p in (path, path + ".partial"):
            if os.path.exists(p):
                os.remove(p)
        rc, err = run_tool(M260K, ["--prompt-ids", "1,403", "--max-new-tokens", "14",
                                   "--temperature", "0", "-o", path] + argv, backend=backend)
        self.assertEqual(rc, status, err)
        last = err.replace("\r", "\n").strip().splitlines()
        self.assertIn(want, "\n".join(last[-2:]))
        self.assertFalse(os.path.exists(path))
        self.assertFalse(os.path.exists(path + ".partial"))

    def test_sliding_window(self):
        be = torch_llama2c.Llama2cBackend(M260K)
        be.model.config.sliding_window = 8
        self.refused([], "cannot capture this model exactly: sliding-window attention "
                     "(sliding_window = 8) in layer 0", be)

    def test_config_refusal(self):
        be = torch_llama2c.Llama2cBackend(M260K)
        be.unsupported = lambda: "sliding-window attention (config sliding_window = 4096)"
        self.refused([], "cannot capture stories260K exactly: sliding-window attention "
                     "(config sliding_window = 4096)", be)

    def test_mask_not_causal(self):
        be = torch_llama2c.Llama2cBackend(M260K)
        causal = be.model.causal_mask

        def banded(t):                       # a window of 4: not plain causal
            m = causal(t)
            low = torch.finfo(m.dtype).min
            return m.masked_fill(torch.ones(t, t, dtype=torch.bool).tril(-4), low)
        be.model.causal_mask = banded
        self.refused([], "layer 0: the attention mask is not plain causal", be)

    def test_mask_with_biases(self):
        be = torch_llama2c.Llama2cBackend(M260K)
        causal = be.model.causal_mask
        be.model.causal_mask = lambda t: causal(t) - 0.5 * torch.ones(t, t).tril()
        self.refused([], "the attention mask adds finite biases", be)

    def test_attention_outside_registry(self):
        be = torch_llama2c.Llama2cBackend(M260K)
        forward = be.forward
        be.forward = lambda ids, name: forward(ids, "eager")      # never selects it
        self.refused([], "only 0 of 5 layers called transformers' attention-function "
                     "registry", be)

    def test_float16_overflow(self):
        be = torch_llama2c.Llama2cBackend(M260K)
        be.model.layers[2].wq *= 1e5
        self.refused([], "does not fit float16 (largest 65504): use --float32", be)
        rc, err = run_tool(M260K, ["--prompt-ids", "1,403", "--max-new-tokens", "14",
                                   "--temperature", "0", "--float32", "-o",
                                   os.path.join(OUT, "big.h5")], backend=be)
        self.assertEqual(rc, 0, err)

    def test_failure_keeps_previous_trace(self):
        path = os.path.join(OUT, "refused.h5")
        be = torch_llama2c.Llama2cBackend(M260K)
        be.model.config.sliding_window = 8
        with open(path, "w") as fh:
            fh.write("previous")
        rc, _ = run_tool(M260K, ["--prompt-ids", "1,403", "--max-new-tokens", "4", "-o",
                                 path], backend=be)
        self.assertEqual(rc, 1)
        with open(path) as fh:
            self.assertEqual(fh.read(), "previous")
        os.remove(path)

    def test_usage(self):
        self.refused(["--check", "99"], "--check 99 exceeds the 16 tokens captured",
                     status=2)
        rc, err = run_tool(M260K, ["-o", "x.h5"])
        self.assertEqual(rc, 2)
        self.assertIn("one of the arguments --prompt --prompt-file --prompt-ids is required",
                      err)
        rc, err = run_tool(M260K, ["--prompt-file", os.path.join(OUT, "absent.txt"), "-o",
                                   os.path.join(OUT, "x.h5")])
        self.assertEqual(rc, 1)
        self.assertIn("absent.txt: No such file or directory", err)
        rc, err = run_tool(M260K, ["--prompt", "Once", "-o", os.path.join(OUT, "x.h5")])
        self.assertEqual(rc, 1)
        self.assertIn("cannot encode the prompt: no tokenizer: use --prompt-ids", err)

    def test_script(self):
        """As a script: --help; without transformers, one line saying what to install."""
        r = subprocess.run(["/usr/bin/python3", TOOL, "--help"], capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0)
        self.assertIn("--check N", r.stdout)
        if importlib.util.find_spec("transformers") is not None:
            return
        r = subprocess.run(["/usr/bin/python3", TOOL, "--model", "x", "--prompt", "hi", "-o",
                            os.path.join(OUT, "x.h5")], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("transformers >= 4.53 is needed", r.stderr)


if __name__ == "__main__":
    unittest.main()
