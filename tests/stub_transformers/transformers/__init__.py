"""A stand-in for transformers, for tests/test_capture_hf.py only: the names and calls
traces/capture_hf.py's HFBackend uses (AttentionInterface.register and lookup,
AutoModelForCausalLM / AutoTokenizer.from_pretrained, config attributes,
set_attn_implementation, generate, a forward with use_cache and logits_to_keep), as
transformers' documentation describes them, backed by the PyTorch llama2.c model of
tests/torch_llama2c.py. It is NOT transformers: it shows that the tool's transformers
glue runs as written, not that transformers behaves as the stub does.

Environment: STUB_TRANSFORMERS_VERSION (default 4.56.0), STUB_SLIDING_WINDOW (a config
sliding_window, default none). The tokenizer maps each character c to id 3 + ord(c) % 500
after BOS (1), so prompts fit stories260K's vocabulary.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch_llama2c  # noqa: E402

__version__ = os.environ.get("STUB_TRANSFORMERS_VERSION", "4.56.0")
torch_llama2c.ATTENTION_FUNCTIONS["sdpa"] = torch_llama2c.eager_attention_forward


class AttentionInterface:
    _global_mapping = {"sdpa": torch_llama2c.eager_attention_forward}

    @classmethod
    def register(cls, name, fn):
        torch_llama2c.ATTENTION_FUNCTIONS[name] = fn

    def __getitem__(self, name):
        return torch_llama2c.ATTENTION_FUNCTIONS.get(name) or self._global_mapping[name]


class _Config:
    def __init__(self, inner):
        self._inner = inner
        self.num_hidden_layers = inner.n_layers
        window = os.environ.get("STUB_SLIDING_WINDOW")
        self.sliding_window = int(window) if window else None
        self._commit_hash = "stub-revision"

    @property
    def _attn_implementation(self):
        return self._inner.attn_implementation

    @_attn_implementation.setter
    def _attn_implementation(self, name):
        self._inner.attn_implementation = name


class _Output:
    def __init__(self, logits):
        self.logits = logits


class _Model:
    def __init__(self, path, dtype, attn_implementation):
        self.inner = torch_llama2c.load(path, dtype)
        self.inner.config.attn_implementation = attn_implementation
        self.config = _Config(self.inner.config)
        self._backend = torch_llama2c.Llama2cBackend.__new__(torch_llama2c.Llama2cBackend)
        self._backend.model = self.inner

    def to(self, device):
        return self

    def eval(self):
        return self

    def set_attn_implementation(self, name):
        self.config._attn_implementation = name

    def __call__(self, input_ids, use_cache=True, logits_to_keep=0):
        logits = self.inner(input_ids)
        return _Output(logits[:, -logits_to_keep:] if logits_to_keep else logits)

    def generate(self, input_ids, attention_mask=None, max_new_tokens=20, do_sample=False,
                 temperature=1.0, top_p=1.0, top_k=50):
        ids = self._backend.generate(input_ids[0].tolist(), max_new_tokens,
                                     temperature if do_sample else 0.0, top_p,
                                     int(torch.initial_seed()) % 2**32)
        return torch.tensor([ids])


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(name, revision=None, attn_implementation="eager", dtype=None,
                        torch_dtype=None):
        # transformers renamed torch_dtype to dtype in 4.56: accept the one of the version
        renamed = tuple(int(v) for v in __version__.split(".")[:2]) >= (4, 56)
        if (dtype is not None and not renamed) or (torch_dtype is not None and renamed):
            raise TypeError(f"from_pretrained of transformers {__version__}: "
                            f"{'torch_dtype' if renamed else 'dtype'} expected")
        if not os.path.exists(name):
            raise OSError(f"{name} is not a local folder and is not a valid model identifier")
        return _Model(name, dtype or torch_dtype or torch.float32, attn_implementation)


class _Tokenizer:
    def __call__(self, text):
        return {"input_ids": [1] + [3 + ord(c) % 500 for c in text]}

    def decode(self, ids):
        return "".join("<s>" if i == 1 else chr(i - 3) for i in ids)


class AutoTokenizer:
    @staticmethod
    def from_pretrained(name, revision=None):
        return _Tokenizer()
