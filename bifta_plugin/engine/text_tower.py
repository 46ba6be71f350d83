"""Exact, faster text encoding: run each text batch at its longest text.

CLIP text towers pad every text to the full context (77 tokens) although a
class description ends after about 20. When the tower

- attends with a causal mask (position p sees positions <= p only), and
- pools the feature at the end-of-text token (``argmax`` of the token ids
  for open_clip's BPE tokenizer, or the ``eos`` token),

the pooled feature depends on the tokens up to the end-of-text position
only, so cutting the batch right after its last end-of-text token gives the
same features (up to float summation order, ~1e-7) at a fraction of the cost.
Texts are bucketed by length so short texts are not padded to long ones.

Any other tower (no causal mask, CLS/first/last pooling, a class token
appended at the end, a Hugging Face text model, an unknown tokenizer) keeps
the full context; :func:`cut_support` says why, and the encoder reports
which path ran (``ClipEncoder.text_path``).
"""

from __future__ import annotations

import torch
from torch import Tensor

CUT = "length-cut"
FULL = "full-context"


def _text_parts(model):
    """The modules of a supported text tower, or (None, reason)."""
    if hasattr(model, "text") and hasattr(model.text, "token_embedding"):
        tower = model.text  # CustomTextCLIP with open_clip's TextTransformer
        if getattr(tower, "cls_emb", None) is not None:
            return None, "the text tower appends a class token"
        pool = getattr(tower, "pool_type", None)
        projection = getattr(tower, "text_projection", None)
    elif hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        tower = model  # CLIP
        pool = getattr(model, "text_pool_type", None)
        projection = getattr(model, "text_projection", None)
    else:
        return None, f"{type(getattr(model, 'text', model)).__name__} is not open_clip's text transformer"
    for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if getattr(tower, name, None) is None:
            return None, f"the text tower has no {name}"
    if getattr(tower, "attn_mask", None) is None:
        return None, "the text tower has no causal attention mask"
    if pool not in ("argmax", "eos"):
        return None, f"the text tower pools with {pool!r}, not at the end-of-text token"
    eos_id = getattr(tower, "eos_id", None) or getattr(model, "text_eos_id", None)
    if pool == "eos" and eos_id is None:
        return None, "the text tower pools at 'eos' but has no eos id"
    return dict(tower=tower, pool=pool, projection=projection, eos_id=eos_id), None


def cut_support(model, tokenizer) -> tuple[bool, str]:
    """Whether length-cut encoding is exact for this model and tokenizer.

    Returns:
        (supported, a sentence saying which path runs and why).
    """
    if not (hasattr(tokenizer, "sot_token_id") and hasattr(tokenizer, "eot_token_id")):
        return False, f"{FULL}: tokenizer {type(tokenizer).__name__} is not open_clip's BPE tokenizer"
    parts, reason = _text_parts(model)
    if parts is None:
        return False, f"{FULL}: {reason}"
    return True, f"{CUT}: causal mask and {parts['pool']} pooling, texts run at their own length"


def end_positions(tokens: Tensor, pool: str, eos_id: int | None = None) -> Tensor:
    """Tensor[N] int64 position of each text's end-of-text token."""
    if pool == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def encode_cut(model, tokens: Tensor) -> Tensor:
    """``model.encode_text(tokens)`` computed on the first L positions only,
    L = 1 + the batch's last end-of-text position.

    Mirrors open_clip's ``CLIP.encode_text`` / ``TextTransformer.forward``
    with the positional embedding and causal mask cut to L (the other
    positions cannot reach the pooled token through a causal mask).

    Args:
        tokens: Tensor[N, context] int64 on the model's device.

    Returns:
        Tensor[N, D] raw (unnormalised) text features.
    """
    from open_clip.transformer import text_global_pool

    parts, reason = _text_parts(model)
    if parts is None:
        raise ValueError(f"length-cut encoding does not apply: {reason}")
    tower, pool, eos_id = parts["tower"], parts["pool"], parts["eos_id"]
    length = int(end_positions(tokens, pool, eos_id).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, pool, eos_token_id=eos_id)
    projection = parts["projection"]
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


def length_buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Positions grouped into batches of similar length (shortest first).

    Returns:
        Lists of at most ``batch_size`` positions into ``lengths``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
