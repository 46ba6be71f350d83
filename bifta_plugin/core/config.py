"""Method hyperparameters: one frozen, validated dataclass.

Every number that changes a prediction lives here, so a config's
``to_dict()`` is the complete provenance of a result and the source of every
cache key. Runtime options that do not change results (device, batch sizes,
worker counts) live in :class:`bifta_plugin.pipeline.RuntimeOptions`.
The methods' presets and the options each method reads are in
:mod:`.methods`.

Defaults follow ``docs/METHOD.md`` §8 (what produced the published
numbers):

- ``wca``: 100 square crops, side ``U(0.1, 0.9) * min(W, H)``. WCA's configs
  say alpha=0.5 but its code never passes it, so alpha=0.1 is what ran.
- ``bifta``: 100 candidates with alpha=0.5, greedy IoU filter at 0.85 with a
  queue cap of 100, description refinement at cosine 0.99 with a cap of 50.
- temperatures ``lambda_v = e^4`` and ``lambda_t = e^2`` (log-space values
  stored, as in the reference configs).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from . import defaults
from .methods import MethodSpec, get_method, off_method_error

DEFAULT_ANCHOR_TEMPLATE = "a photo of a {}."

# CLIP-E style prompt ensemble: our own short, generic set (the reference
# loads per-dataset files). Each must contain exactly one "{}".
DEFAULT_ENSEMBLE_TEMPLATES = (
    "a photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a rendition of a {}.",
    "art of the {}.",
    "a photo of one {}.",
)

SCORE_FORMS = ("normalized", "paper")
PROTOCOLS = ("single_pass", "resample")


@dataclass(frozen=True)
class BiftaConfig:
    """All method hyperparameters of one run.

    Build one with :func:`get_config`, which starts from the method's preset
    and applies validated overrides.
    """

    method: str = defaults.METHOD

    # --- local views (crops); ignored by the global-only methods ---
    num_candidates: int = 100  # square crops drawn per image (N_pool / n_samples)
    max_views: int = 100  # queue cap Q on retained crops
    min_scale: float = 0.5  # alpha: crop side >= min_scale * shorter image side
    max_scale: float = 0.9  # beta: crop side < max_scale * shorter image side
    iou_threshold: float | None = 0.85  # keep a crop if max IoU to kept <= this; None = no filter

    # --- weights ---
    image_log_scale: float = 4.0  # lambda_v = exp(image_log_scale)
    text_log_scale: float = 2.0  # lambda_t = exp(text_log_scale)
    anchor_template: str = DEFAULT_ANCHOR_TEMPLATE  # text anchor t_c for description weights

    # --- description refinement (BiFTA); None = keep every description ---
    desc_sim_threshold: float | None = 0.99  # keep if max cosine to kept <= this
    max_descriptions: int | None = 50  # cap K on kept descriptions per class

    # --- prompt ensemble (method "ensemble") ---
    templates: tuple = DEFAULT_ENSEMBLE_TEMPLATES

    # --- scoring ---
    score_form: str = "normalized"  # "normalized" (reference code) or "paper" (a . u_c)
    protocol: str = "single_pass"  # "single_pass" or "resample" (reference evaluation)
    num_runs: int = 20  # resample protocol: number of runs
    num_draws: int = 60  # resample protocol: crops drawn with replacement per run

    seed: int = 42  # crop boxes depend only on (seed, image key)

    # ------------------------------------------------------------------
    def __post_init__(self):
        _validate(self)

    @property
    def spec(self) -> MethodSpec:
        """What the method does (:mod:`.methods`)."""
        return get_method(self.method)

    @property
    def uses_crops(self) -> bool:
        return self.spec.uses_crops

    @property
    def uses_descriptions(self) -> bool:
        return self.spec.uses_descriptions

    @property
    def image_scale(self) -> float:
        """lambda_v, the visual temperature."""
        return math.exp(self.image_log_scale)

    @property
    def text_scale(self) -> float:
        """lambda_t, the textual temperature."""
        return math.exp(self.text_log_scale)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field."""
        d = dataclasses.asdict(self)
        d["templates"] = list(self.templates)
        return d


def get_config(method: str = defaults.METHOD, **overrides) -> BiftaConfig:
    """The preset of ``method`` with ``overrides`` applied.

    ``None`` overrides are dropped (so callers can pass optional arguments
    straight through), except for the fields where ``None`` means "off"
    (``iou_threshold``, ``desc_sim_threshold``, ``max_descriptions``), which
    are disabled by passing the string ``"off"`` (handy from a CLI or form).

    An override of an option the method does not read (``desc_sim_threshold``
    for ``wca``, ``num_candidates`` for ``clip``, ...) is refused unless it
    equals the preset's value: the config is the run's provenance, so it
    never records a setting that took no part in the run.

    Raises:
        ValueError: unknown method, unknown override key, an option the
            method does not read, or a bad value.
    """
    spec = get_method(method)
    known = {f.name for f in dataclasses.fields(BiftaConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"Unknown config option(s) {unknown}; valid options are "
            f"{sorted(known - {'method'})}"
        )
    if "method" in overrides and overrides["method"] != method:
        raise ValueError(
            f"method given twice: {method!r} and {overrides['method']!r}"
        )
    values = {**_FIELD_DEFAULTS, **spec.preset, "method": method}
    for key, value in overrides.items():
        value = _override_value(key, value)
        if value is _DROP or value == values[key]:
            continue
        message = off_method_error(method, key)
        if message:
            raise ValueError(message)
        values[key] = value
    return BiftaConfig(**values)


_DROP = object()


def _override_value(key: str, value):
    """An override as a field value: None = not given, "off" = None."""
    if value is None:
        return _DROP
    if isinstance(value, str) and value.lower() == "off" and key in _NULLABLE:
        return None
    if key == "templates" and not isinstance(value, tuple):
        return tuple(value)
    return value


def config_from_dict(d: Mapping[str, Any]) -> BiftaConfig:
    """Rebuild a config saved with :meth:`BiftaConfig.to_dict`."""
    d = dict(d)
    if "templates" in d:
        d["templates"] = tuple(d["templates"])
    return BiftaConfig(**d)


_NULLABLE = ("iou_threshold", "desc_sim_threshold", "max_descriptions")
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(BiftaConfig)}


def _check(condition: bool, message: str):
    if not condition:
        raise ValueError(message)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return (
        isinstance(x, (int, float))
        and not isinstance(x, bool)
        and math.isfinite(x)
    )


def _validate(cfg: BiftaConfig):
    get_method(cfg.method)  # raises for an unknown method
    for name in ("num_candidates", "max_views", "num_runs", "num_draws"):
        value = getattr(cfg, name)
        _check(
            _is_int(value) and value >= 1,
            f"{name} must be an integer >= 1; got {value!r}",
        )
    _check(_is_int(cfg.seed), f"seed must be an integer; got {cfg.seed!r}")
    _check(
        _is_real(cfg.min_scale)
        and _is_real(cfg.max_scale)
        and 0 < cfg.min_scale <= cfg.max_scale <= 1,
        "crop scales must satisfy 0 < min_scale <= max_scale <= 1; got "
        f"min_scale={cfg.min_scale!r}, max_scale={cfg.max_scale!r}",
    )
    for name in ("iou_threshold", "desc_sim_threshold"):
        value = getattr(cfg, name)
        if value is not None:
            _check(
                _is_real(value) and 0 <= value <= 1,
                f"{name} must be in [0, 1] (or None to disable); got {value!r}",
            )
    if cfg.max_descriptions is not None:
        _check(
            _is_int(cfg.max_descriptions) and cfg.max_descriptions >= 1,
            "max_descriptions must be an integer >= 1 (or None for no cap); "
            f"got {cfg.max_descriptions!r}",
        )
    for name in ("image_log_scale", "text_log_scale"):
        value = getattr(cfg, name)
        _check(
            _is_real(value) and -20 <= value <= 20,
            f"{name} must be a finite log-temperature in [-20, 20]; got {value!r}",
        )
    _check_template(cfg.anchor_template, "anchor_template")
    _check(
        isinstance(cfg.templates, tuple) and len(cfg.templates) > 0,
        "templates must be a non-empty sequence of strings with one '{}'",
    )
    for template in cfg.templates:
        _check_template(template, "each template")
    _check(
        cfg.score_form in SCORE_FORMS,
        f"score_form must be one of {list(SCORE_FORMS)}; got {cfg.score_form!r}",
    )
    _check(
        cfg.protocol in PROTOCOLS,
        f"protocol must be one of {list(PROTOCOLS)}; got {cfg.protocol!r}",
    )


def _check_template(template, what: str):
    _check(
        isinstance(template, str) and template.count("{}") == 1,
        f"{what} must be a string with exactly one '{{}}' for the class "
        f"name; got {template!r}",
    )
