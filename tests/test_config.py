"""Config presets and validation."""

import pytest

from bifta_plugin.core.config import BiftaConfig, config_from_dict, get_config
from bifta_plugin.core.methods import list_methods


def test_presets_match_published_defaults():
    wca, bifta = get_config("wca"), get_config("bifta")
    assert wca.min_scale == 0.1 and wca.iou_threshold is None  # WCA's code, not its cfg
    assert wca.desc_sim_threshold is None and wca.max_descriptions is None
    assert bifta.min_scale == 0.5 and bifta.max_scale == 0.9
    assert bifta.iou_threshold == 0.85 and bifta.max_views == 100 and bifta.num_candidates == 100
    assert bifta.desc_sim_threshold == 0.99 and bifta.max_descriptions == 50
    for cfg in (wca, bifta):
        assert cfg.image_scale == pytest.approx(54.598150033)
        assert cfg.text_scale == pytest.approx(7.389056099)
        assert cfg.anchor_template == "a photo of a {}."
        assert cfg.score_form == "normalized" and cfg.protocol == "single_pass"


@pytest.mark.parametrize("method", list_methods())
def test_every_method_roundtrips(method):
    cfg = get_config(method)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_overrides_and_off():
    cfg = get_config("bifta", iou_threshold="off", seed=None, num_candidates=300)
    assert cfg.iou_threshold is None and cfg.seed == 42 and cfg.num_candidates == 300


@pytest.mark.parametrize(
    "method,overrides,match",
    [
        ("nope", {}, "Unknown method"),
        ("bifta", {"iou_thresh": 0.5}, "Unknown config option"),
        ("bifta", {"iou_threshold": -0.1}, "iou_threshold"),
        ("bifta", {"iou_threshold": 1.5}, "iou_threshold"),
        ("bifta", {"desc_sim_threshold": -1.0}, "desc_sim_threshold"),
        ("bifta", {"min_scale": 0.95}, "min_scale"),
        ("bifta", {"min_scale": 0.0}, "min_scale"),
        ("bifta", {"num_candidates": 0}, "num_candidates"),
        ("bifta", {"max_views": 2.5}, "max_views"),
        ("bifta", {"max_descriptions": 0}, "max_descriptions"),
        ("bifta", {"score_form": "raw"}, "score_form"),
        ("bifta", {"protocol": "twenty"}, "protocol"),
        ("ensemble", {"templates": ["no placeholder"]}, "template"),
        ("bifta", {"anchor_template": "{} {}"}, "anchor_template"),
        ("bifta", {"image_log_scale": float("nan")}, "image_log_scale"),
    ],
)
def test_bad_values_raise_clear_errors(method, overrides, match):
    with pytest.raises(ValueError, match=match):
        get_config(method, **overrides)


def test_config_is_frozen():
    with pytest.raises(Exception):
        BiftaConfig().seed = 3
