"""Stand-in for transformers.masking_utils (see __init__.py): the mask functions are only
registered by name; the llama2.c model always builds its additive causal mask."""
REGISTERED = {}


def sdpa_mask(*args, **kwargs):
    raise NotImplementedError("stub")


def eager_mask(*args, **kwargs):
    raise NotImplementedError("stub")


class AttentionMaskInterface:
    @classmethod
    def register(cls, name, fn):
        REGISTERED[name] = fn
