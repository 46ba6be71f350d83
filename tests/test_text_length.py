"""Length-cut text encoding gives the full-context features, faster."""


import open_clip
import pytest
import torch

from bifta_plugin.engine import text_tower
from bifta_plugin.engine.encoders import create_encoder

TEXTS = [
    "a cat.",
    "a photo of a small grey cat sitting on a wooden table next to a window.",
    "",
    "an astronaut in a white suit floating above the earth, with the blue planet behind.",
    "coffee",
    "word " * 100,  # longer than the context: truncated by the tokenizer, EOT at the end
] + [f"description number {i} of a bird with {'long ' * (i % 9)}wings." for i in range(40)]


def full_context(encoder, texts):
    return torch.cat([encoder._encode_text_batch(texts[i : i + 7]) for i in range(0, len(texts), 7)])


def test_tiny_model_length_cut_equals_the_full_context(tiny_model_name):
    torch.manual_seed(0)
    encoder = create_encoder(tiny_model_name, None, device="cpu")
    assert encoder.length_cut and encoder.text_path.startswith("length-cut")
    cut = encoder.encode_texts(TEXTS, batch_size=7)
    assert encoder.length_cut  # the first-use check passed
    torch.testing.assert_close(cut, full_context(encoder, TEXTS), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_vit_b32_text_tower_length_cut_equals_the_full_context():
    torch.manual_seed(0)
    encoder = create_encoder("ViT-B-32", None, device="cpu")
    assert encoder.context_length == 77 and encoder.length_cut
    cut = encoder.encode_texts(TEXTS, batch_size=16)
    torch.testing.assert_close(cut, full_context(encoder, TEXTS), atol=1e-6, rtol=0)
    # the cut runs fewer positions: on these texts about 3x fewer tokens
    tokens = encoder.tokenizer(TEXTS)
    lengths = text_tower.end_positions(tokens, "argmax") + 1
    buckets = text_tower.length_buckets(lengths.tolist(), 16)
    cut_tokens = sum(len(b) * int(max(lengths[b])) for b in buckets)
    assert cut_tokens * 2 < len(TEXTS) * 77


def test_length_buckets_sort_by_length_and_cover_every_text():
    buckets = text_tower.length_buckets([5, 2, 9, 2, 7], 2)
    assert buckets == [[1, 3], [0, 4], [2]]


class _NoCausalMask(torch.nn.Module):
    """A stand-in text tower without a causal mask: must keep the full context."""


def test_unsupported_towers_and_tokenizers_keep_the_full_context(tiny_model_name):
    model, _, _ = open_clip.create_model_and_transforms(tiny_model_name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(tiny_model_name)
    ok, why = text_tower.cut_support(model, tokenizer)
    assert ok, why
    mask = model.attn_mask
    model.attn_mask = None
    ok, why = text_tower.cut_support(model, tokenizer)
    assert not ok and why == "full-context: the text tower has no causal attention mask"
    model.attn_mask = mask
    model.text_pool_type = "first"
    ok, why = text_tower.cut_support(model, tokenizer)
    assert not ok and "pools with 'first'" in why
    ok, why = text_tower.cut_support(_NoCausalMask(), tokenizer)
    assert not ok and "not open_clip's text transformer" in why
    ok, why = text_tower.cut_support(model, lambda texts: None)
    assert not ok and "not open_clip's BPE tokenizer" in why


def test_a_failed_first_use_check_turns_the_cut_off(tiny_model_name, monkeypatch):
    torch.manual_seed(0)
    encoder = create_encoder(tiny_model_name, None, device="cpu")
    real = text_tower.encode_cut
    monkeypatch.setattr(text_tower, "encode_cut", lambda model, tokens: real(model, tokens) + 1.0)
    out = encoder.encode_texts(TEXTS[:5])
    assert not encoder.length_cut and "check differed" in encoder.text_path
    torch.testing.assert_close(out, full_context(encoder, TEXTS[:5]), atol=0, rtol=0)
