"""The method table: what each method reads, refuses and records.

The pure part checks the table against the config; the FiftyOne part runs
``run_bifta`` for every method on the tiny model and rebuilds the classifier
from the *recorded* config alone: it must reproduce every prediction, so the
record is exactly what ran.
"""

import dataclasses

import numpy as np
import pytest

from bifta_plugin.core.config import BiftaConfig, config_from_dict, get_config
from bifta_plugin.core.methods import (
    METHODS,
    OPTION_ROLES,
    get_method,
    list_methods,
    off_method_error,
)

CONFIG_OPTIONS = [f.name for f in dataclasses.fields(BiftaConfig) if f.name != "method"]

#: a valid value for each option, different from every preset's
OTHER_VALUE = dict(
    num_candidates=7, max_views=5, min_scale=0.3, max_scale=0.8, iou_threshold=0.5,
    image_log_scale=3.0, text_log_scale=1.0, anchor_template="an image of a {}.",
    desc_sim_threshold=0.9, max_descriptions=3, templates=("a {}.",), score_form="paper",
    protocol="resample", num_runs=3, num_draws=4, seed=3,
)  # fmt: skip


def test_the_table_covers_the_methods_and_the_options():
    assert list_methods() == ["bifta", "wca", "descriptions", "ensemble", "clip"]
    assert sorted(OTHER_VALUE) == sorted(CONFIG_OPTIONS)
    roles = [name for names, _ in OPTION_ROLES.values() for name in names]
    assert sorted(roles) == sorted(CONFIG_OPTIONS)  # every option has one role
    for spec in METHODS.values():
        assert set(spec.preset) <= set(CONFIG_OPTIONS)
        assert get_config(spec.name).spec is spec
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        get_method("nope")


def test_what_each_method_does():
    rows = {
        name: (s.uses_crops, s.uses_descriptions, s.weights_descriptions, s.refines_views,
               s.refines_descriptions, s.shared_resample_draws, s.texts)
        for name, s in METHODS.items()
    }  # fmt: skip
    assert rows == {
        "bifta": (True, True, True, True, True, False, "descriptions"),
        "wca": (True, True, True, False, False, True, "descriptions"),
        "descriptions": (False, True, False, False, False, False, "descriptions"),
        "ensemble": (False, False, False, False, False, False, "templates"),
        "clip": (False, False, False, False, False, False, "anchor"),
    }


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("option", CONFIG_OPTIONS)
def test_an_override_is_applied_or_refused_never_ignored(method, option):
    value = OTHER_VALUE[option]
    message = off_method_error(method, option)
    if option in get_method(method).options:
        assert message is None
        assert getattr(get_config(method, **{option: value}), option) == value
    else:
        assert message.startswith(f"{method} ") and f"; {option} is a " in message
        with pytest.raises(ValueError) as info:
            get_config(method, **{option: value})
        assert str(info.value) == message
        # the method's own value (what it runs) is accepted, e.g. "off"
        preset = getattr(get_config(method), option)
        assert get_config(method, **{option: preset}) == get_config(method)


def test_wca_refuses_bifta_refinements_so_its_draws_stay_shared():
    assert get_config("wca", desc_sim_threshold="off") == get_config("wca")
    with pytest.raises(ValueError, match="wca does not refine descriptions; desc_sim_threshold is a bifta option"):
        get_config("wca", desc_sim_threshold=0.5, max_descriptions=1)
    with pytest.raises(ValueError, match="iou_threshold is a bifta option"):
        get_config("wca", iou_threshold=0.5)
    # BiFTA may switch its filter off and still draws per image
    assert get_config("bifta", iou_threshold="off").spec.shared_resample_draws is False


# ----------------------------------------------------------------------------
# the recorded config is what ran
# ----------------------------------------------------------------------------
CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {
    "cat": ["a cat with whiskers", "a small furry pet", "a cat with whiskers"],
    "astronaut": ["a person in a space suit", "an astronaut with a helmet"],
    "coffee": ["a cup of coffee", "a hot drink in a mug"],
}
RUNS = {
    "clip": dict(anchor_template="a picture of a {}."),
    "ensemble": dict(templates=("a photo of a {}.", "art of a {}.")),
    "descriptions": {},
    "wca": dict(num_candidates=6, max_views=6, protocol="resample", num_runs=2, num_draws=4),
    "bifta": dict(num_candidates=8, max_views=5, iou_threshold=0.7, max_descriptions=1),
}


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


@pytest.mark.fiftyone
@pytest.mark.parametrize("method", list(RUNS))
def test_recorded_config_reproduces_the_run(fo_dataset, sample_images, encoder, method):
    from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions
    from bifta_plugin.sdk import records
    from bifta_plugin.sdk.options import split_options
    from bifta_plugin.sdk.run import run_bifta

    ds = fo_dataset(sample_images[:3])
    spec = get_method(method)
    descriptions = DESCRIPTIONS if spec.uses_descriptions else None
    groups = split_options(dict(instance=encoder, label_field="p", num_workers=0, batch_size=2))
    run_bifta(ds, CLASSES, descriptions, method=method, **groups, **RUNS[method])

    recorded = records.get_bifta_run_info(ds, "p")["config"]
    assert recorded == get_config(method, **RUNS[method]).to_dict()
    config = config_from_dict(recorded)
    again = BiftaClassifier(encoder, CLASSES, descriptions, config, RuntimeOptions(num_workers=0))
    paths, labels, logits = ds.values(["filepath", "p.label", "p.logits"])
    preds = again.predict(paths, keys=paths)
    assert [p.label for p in preds] == labels
    np.testing.assert_allclose(np.array([p.logits for p in preds]), np.array(logits), rtol=1e-5, atol=1e-5)
    crops = ds.values("p_crops") if spec.uses_crops else [None] * len(paths)
    for pred, stored in zip(preds, crops):
        if spec.uses_crops:
            assert len(stored.detections) == len(pred.boxes) <= config.max_views
        else:
            assert len(pred.boxes) == 0
    if spec.refines_descriptions:  # max_descriptions=1 took part in the run
        assert all(len(t) == 1 for t in again.text.texts)
