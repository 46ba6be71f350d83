"""The method table: what each of the five methods does, in one place.

Every consumer (config validation, the text side, the pipeline, the forms,
the CLI, the demo) asks this table instead of comparing method names. Pure
Python, so forms and argument parsers read it without torch.

====================  =====  ========  ==========  ===========  ======
method                crops  descr.    IoU filter  descr. ref.  shared
====================  =====  ========  ==========  ===========  ======
``clip``              no     no        no          no           -
``ensemble``          no     no        no          no           -
``descriptions``      no     yes       no          no           -
``wca``               yes    weighted  no          no           yes
``bifta``             yes    weighted  yes         yes          no
====================  =====  ========  ==========  ===========  ======

"shared": under ``protocol="resample"`` WCA's draws are one index vector for
every image (its reference draws them once per run, independently of the
image); BiFTA draws per image from the crops that survived its IoU filter
(``docs/METHOD.md`` §7.2).

Each config option belongs to one *role* (:data:`OPTION_ROLES`); a method
reads the options of the roles it has. :func:`off_method_error` names an
override that the method would not read, so that a config never records a
value that did not take part in the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

#: role -> (config options, what a method without the role does not do)
OPTION_ROLES: Mapping[str, tuple[tuple[str, ...], str]] = MappingProxyType(
    {
        "crops": (
            (
                "num_candidates",
                "max_views",
                "min_scale",
                "max_scale",
                "image_log_scale",
                "score_form",
                "protocol",
                "num_runs",
                "num_draws",
                "seed",
            ),
            "does not use crops",
        ),
        "view_refinement": (("iou_threshold",), "does not filter its crops by IoU"),
        "description_refinement": (
            ("desc_sim_threshold", "max_descriptions"),
            "does not refine descriptions",
        ),
        "description_weights": (("text_log_scale",), "does not weight descriptions"),
        "anchor": (("anchor_template",), "uses no anchor prompt"),
        "templates": (("templates",), "uses no prompt templates"),
    }
)


@dataclass(frozen=True)
class MethodSpec:
    """What one method does.

    Attributes:
        name: the method name (``BiftaConfig.method``).
        label: the form's one-line description.
        texts: where a class's texts come from: "anchor" (one prompt),
            "templates" (the prompt ensemble) or "descriptions".
        uses_crops: local views (crops) besides the global image.
        weights_descriptions: descriptions weighted by similarity to the
            anchor prompt (WCA's ``softmax(lambda_t t_j . t_c)``); else the
            mean of the texts.
        refines_views: BiFTA's greedy IoU filter on the crops.
        refines_descriptions: BiFTA's greedy cosine filter on descriptions.
        shared_resample_draws: resample protocol draws shared by all images.
        preset: the config values of the method (``docs/METHOD.md`` §8).
    """

    name: str
    label: str
    texts: str
    uses_crops: bool = False
    weights_descriptions: bool = False
    refines_views: bool = False
    refines_descriptions: bool = False
    shared_resample_draws: bool = False
    preset: Mapping[str, Any] = field(default_factory=dict)

    @property
    def uses_descriptions(self) -> bool:
        return self.texts == "descriptions"

    @property
    def roles(self) -> frozenset:
        """The option roles (:data:`OPTION_ROLES`) this method has."""
        has = {
            "crops": self.uses_crops,
            "view_refinement": self.refines_views,
            "description_refinement": self.refines_descriptions,
            "description_weights": self.weights_descriptions,
            "anchor": self.texts == "anchor" or self.weights_descriptions,
            "templates": self.texts == "templates",
        }
        return frozenset(role for role, yes in has.items() if yes)

    @property
    def options(self) -> frozenset:
        """The config options this method reads."""
        return frozenset(
            name for role in self.roles for name in OPTION_ROLES[role][0]
        )


_OFF = dict(iou_threshold=None, desc_sim_threshold=None, max_descriptions=None)

_SPECS = (
    MethodSpec(
        "bifta",
        "BiFTA: crops + refined descriptions (recommended)",
        texts="descriptions",
        uses_crops=True,
        weights_descriptions=True,
        refines_views=True,
        refines_descriptions=True,
        preset=MappingProxyType({}),  # the BiftaConfig defaults
    ),
    MethodSpec(
        "wca",
        "WCA: crops + descriptions",
        texts="descriptions",
        uses_crops=True,
        weights_descriptions=True,
        shared_resample_draws=True,
        # min_scale 0.1: what WCA's code ran; its config's 0.5 is never
        # passed (docs/METHOD.md §9.1)
        preset=MappingProxyType(dict(_OFF, min_scale=0.1)),
    ),
    MethodSpec(
        "descriptions",
        "Descriptions only (CuPL style, no crops)",
        texts="descriptions",
        preset=MappingProxyType(_OFF),
    ),
    MethodSpec(
        "ensemble",
        "Prompt ensemble (templates, no descriptions)",
        texts="templates",
        preset=MappingProxyType(_OFF),
    ),
    MethodSpec(
        "clip",
        "Plain CLIP ('a photo of a {}.')",
        texts="anchor",
        preset=MappingProxyType(_OFF),
    ),
)

#: name -> spec, in the order the forms list them
METHODS: Mapping[str, MethodSpec] = MappingProxyType({s.name: s for s in _SPECS})


def list_methods() -> list[str]:
    """The method names, in the table's order."""
    return list(METHODS)


def get_method(name) -> MethodSpec:
    """The spec of method ``name``.

    Raises:
        ValueError: unknown method (listing the known ones).
    """
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"Unknown method {name!r}; expected one of {list_methods()}")
    return spec


def methods_with(predicate) -> list[str]:
    """Names of the methods whose spec satisfies ``predicate(spec)``."""
    return [s.name for s in METHODS.values() if predicate(s)]


def option_users(option: str) -> list[str]:
    """The methods that read config option ``option``."""
    return methods_with(lambda s: option in s.options)


def off_method_error(method: str, option: str) -> str | None:
    """Why ``method`` refuses an override of ``option``, or None if it reads it.

    E.g. "wca does not refine descriptions; desc_sim_threshold is a bifta
    option".
    """
    spec = get_method(method)
    if option in spec.options:
        return None
    role = next((r for r, (names, _) in OPTION_ROLES.items() if option in names), None)
    if role is None:
        return None  # not a method option (``method`` itself, unknown keys)
    users = "/".join(option_users(option))
    return f"{method} {OPTION_ROLES[role][1]}; {option} is a {users} option"


def descriptions_needed_error(method: str) -> str:
    """The one message for a description method run without descriptions.

    No caller switches to another method instead: the SDK, the CLI and the
    form all refuse with this message.
    """
    others = "/".join(methods_with(lambda s: not s.uses_descriptions))
    return (
        f"method {method!r} needs class descriptions: give a descriptions "
        f"file (or generate them), or choose a method that uses none ({others})"
    )
