"""A tiny open_clip model for fast tests (no pretrained weights needed).

``tests/assets/bifta-tiny-test.json``: embed_dim 64; vision 64 px, patch 16,
2 layers of width 64; text context 16, 2 layers of width 64, CLIP's BPE
vocabulary. It encodes 64 images in about 0.01 s on 2 CPU cores.

Random weights change with every construction, so caches keyed on them are
never shared. For a stable identity (disk caches, equal outputs across
encoders), save the weights once with :func:`save_tiny_checkpoint` and pass
the file as ``pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CONFIG_PATH = Path(__file__).parent / "assets" / "bifta-tiny-test.json"
TINY_MODEL_NAME = TINY_CONFIG_PATH.stem  # open_clip names configs by stem


def register_tiny_config() -> str:
    """Register the tiny config with open_clip (idempotent).

    Returns:
        The model name, "bifta-tiny-test".
    """
    import open_clip

    if TINY_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG_PATH)
    return TINY_MODEL_NAME


def save_tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Save a seeded random tiny model's state dict to ``path``.

    Returns:
        The path, for ``create_encoder(TINY_MODEL_NAME, pretrained=path)``.
    """
    import open_clip

    register_tiny_config()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_MODEL_NAME, pretrained=None)
    finally:
        torch.random.set_rng_state(state)
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path
