"""The text side: class texts per method, description refinement, class vectors.

``build_text_side`` turns class names (plus descriptions for the description
methods) into the tensors the scorer needs. It takes any
``encode_texts(list[str]) -> Tensor[N, D]`` callable, so the same code runs
with an open_clip encoder, a cached one, or the conformance fixtures' lookup
tables. Raw features are L2-normalised here.

Per method (``docs/METHOD.md`` §5):

- ``clip``: one text, the anchor "a photo of a {c}.";
- ``ensemble``: the config's templates formatted with the class name;
- ``descriptions``: the class's descriptions verbatim (CuPL style);
  baselines use the normalised mean of normalised text embeddings;
- ``wca``: descriptions verbatim, duplicates kept (they count once per
  occurrence, as in the reference), weighted by ``softmax(lambda_t t_j.t_c)``;
- ``bifta``: descriptions refined first (greedy cosine filter in list order,
  keep when the max cosine to kept ones is ``<= desc_sim_threshold``, stop at
  ``max_descriptions``), then weighted as in WCA. The reference ships only
  pre-refined files; the refinement code here follows the rule inferred from
  them (``docs/METHOD.md`` §5.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from . import scoring
from .boxes import greedy_filter
# re-exported: the torch-free name rules live in classnames
from .classnames import wordify
from .config import BiftaConfig
from .methods import descriptions_needed_error

EncodeTexts = Callable[[list], Tensor]


def class_texts(
    config: BiftaConfig,
    classes: Sequence[str],
    descriptions: Mapping[str, Sequence[str]] | None = None,
) -> list[list[str]]:
    """The candidate texts of every class, in class order, for ``config.method``.

    Raises:
        ValueError: a description method with a class that has no
            descriptions (naming the classes).
    """
    source = config.spec.texts
    if source == "anchor":
        return [[config.anchor_template.format(wordify(c))] for c in classes]
    if source == "templates":
        return [[t.format(wordify(c)) for t in config.templates] for c in classes]
    if descriptions is None:
        raise ValueError(descriptions_needed_error(config.method))
    missing = [c for c in classes if not descriptions.get(c)]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ValueError(
            f"{len(missing)} class(es) have no descriptions: {shown}{more}"
        )
    return [[str(t) for t in descriptions[c]] for c in classes]


def refine_descriptions(
    embeddings: Tensor, threshold: float | None, max_keep: int | None
) -> list[int]:
    """BiFTA description refinement on one class's descriptions.

    Args:
        embeddings: Tensor[M, D] L2-normalised description embeddings, in
            list order.
        threshold: keep when the max cosine to kept ones is ``<= threshold``;
            None keeps every description (up to ``max_keep``).
        max_keep: cap K, or None for no cap.

    Returns:
        Kept indices, in order.
    """
    num = embeddings.shape[0]
    cap = num if max_keep is None else min(max_keep, num)
    if threshold is None:
        return list(range(cap))
    # Rounding can push the cosine of identical texts just past 1; clamp so
    # that a threshold of 1.0 keeps everything, as it does for boxes.
    cos = (embeddings.double() @ embeddings.double().T).clamp(-1.0, 1.0)  # [M, M]
    return greedy_filter(cos, threshold, max(cap, 1))


@dataclass
class TextSide:
    """Everything the scorer needs from the text encoder.

    Attributes:
        class_names: the C class names, in order.
        class_embeddings: Tensor[C, D] normalised class vectors ``u_c/||u_c||``
            (the mean-of-texts vector for baselines).
        class_vectors: Tensor[C, D] unnormalised ``u_c = sum_j v_j t_j`` (the
            paper's score form); equal to ``class_embeddings`` for baselines.
        desc_embeddings: Tensor[C, M, D] kept texts, padded.
        desc_mask: Tensor[C, M] bool.
        desc_weights: Tensor[C, M] (uniform for baselines).
        texts: kept texts per class.
        num_candidates: texts per class before refinement.
    """

    class_names: list
    class_embeddings: Tensor
    class_vectors: Tensor
    desc_embeddings: Tensor
    desc_mask: Tensor
    desc_weights: Tensor
    texts: list
    num_candidates: list = field(default_factory=list)

    def scoring_vectors(self, score_form: str) -> Tensor:
        """Class vectors for ``score_form`` ("normalized" or "paper")."""
        return self.class_vectors if score_form == "paper" else self.class_embeddings

    def refinement_report(self) -> list[dict]:
        """Per class: how many texts there were and how many were kept."""
        return [
            dict(label=c, candidates=n, kept=len(t))
            for c, n, t in zip(self.class_names, self.num_candidates, self.texts)
        ]

    def to(self, device) -> "TextSide":
        for name in (
            "class_embeddings",
            "class_vectors",
            "desc_embeddings",
            "desc_mask",
            "desc_weights",
        ):
            setattr(self, name, getattr(self, name).to(device))
        return self


def encode_unique(texts: Sequence[str], encode_texts: EncodeTexts) -> dict:
    """Encode each distinct string once; returns ``{text: Tensor[D]}`` normalised."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    features = scoring.l2_normalize(encode_texts(unique).float())
    return {t: features[i] for i, t in enumerate(unique)}


def build_text_side(
    config: BiftaConfig,
    classes: Sequence[str],
    encode_texts: EncodeTexts,
    descriptions: Mapping[str, Sequence[str]] | None = None,
) -> TextSide:
    """Class vectors for ``config.method`` (``docs/METHOD.md`` §5, §6).

    Args:
        config: the method config.
        classes: class names (validate user input with
            :func:`validate_classes` first; repeats are allowed here so the
            reference's duplicate-name datasets can be reproduced).
        encode_texts: ``list[str] -> Tensor[N, D]`` raw text features.
        descriptions: ``{class name: [texts]}`` keyed exactly by class name.

    Returns:
        A :class:`TextSide` on the CPU.
    """
    texts = class_texts(config, classes, descriptions)
    weighted = config.spec.weights_descriptions
    anchors = [config.anchor_template.format(wordify(c)) for c in classes]
    all_texts = [t for group in texts for t in group]
    lookup = encode_unique(all_texts + (anchors if weighted else []), encode_texts)

    kept_texts, per_class = [], []
    for group in texts:
        emb = torch.stack([lookup[t] for t in group])  # [M_c, D]
        if config.spec.refines_descriptions:
            keep = refine_descriptions(
                emb, config.desc_sim_threshold, config.max_descriptions
            )
            emb, group = emb[keep], [group[i] for i in keep]
        kept_texts.append(group)
        per_class.append(emb)
    desc_embeddings, mask = scoring.pad_ragged(per_class)

    if weighted:
        anchor_emb = torch.stack([lookup[a] for a in anchors])  # [C, D]
        weights = scoring.description_weights(
            desc_embeddings, anchor_emb, mask, config.text_log_scale
        )
        class_vectors = scoring.weighted_sum(desc_embeddings, weights)  # [C, D]
        class_embeddings = scoring.l2_normalize(class_vectors)
    else:
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True)
        class_embeddings = scoring.mean_embeddings(desc_embeddings, mask)
        class_vectors = class_embeddings
    return TextSide(
        class_names=list(classes),
        class_embeddings=class_embeddings,
        class_vectors=class_vectors,
        desc_embeddings=desc_embeddings,
        desc_mask=mask,
        desc_weights=weights,
        texts=kept_texts,
        num_candidates=[len(g) for g in texts],
    )
