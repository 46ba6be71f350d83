"""The panels with a real ExecutionContext and Executor (no App).

Each event gets a fresh context whose ``panel_state`` is the previous one's,
JSON round-tripped as the App would send it back; the App operations the
panel triggers (``patch_panel_state``, ``patch_panel_data``, ``set_view``,
``notify``, ...) are read from ``ctx.executor._requests``.
"""

import copy
import json

import pytest

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone import ViewField as F
from fiftyone.operators.executor import Executor

from bifta_plugin.sdk import analysis as ba
from bifta_plugin.ui import panels as bp
from test_analysis import CLASSES, build_dataset

pytestmark = pytest.mark.fiftyone

PLUGIN = "@bifta/bifta"


def make_panel(cls):
    panel = cls()
    panel.plugin_name = PLUGIN  # set by the registry when loaded by FiftyOne
    return panel


class Session:
    """Drives one panel instance like the App: state carried across events,
    an App view, and the requests of the last event."""

    def __init__(self, panel, dataset, **request):
        self.panel = panel
        self.dataset = dataset
        self.state = {}
        self.request = request  # extra request params (view, current_sample)
        self.ctx = None

    def event(self, method, **params):
        if "path" in params and "value" in params:
            # the App stores an input's value at its path before the event
            node = self.state
            *parents, leaf = params["path"].split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = params["value"]
        request = {
            "dataset_name": self.dataset.name,
            "params": {
                "panel_id": "p1",
                "panel_state": json.loads(json.dumps(self.state)),
                **params,
            },
            **copy.deepcopy(self.request),
        }
        self.ctx = foo.ExecutionContext(
            request_params=request,
            executor=Executor(),
            operator_uri=self.panel.uri,
        )
        getattr(self.panel, method)(self.ctx)
        self.state = self.ctx.panel_state
        return self.ctx

    def requests(self, name):
        return [
            r.params
            for r in self.ctx.executor._requests
            if r.operator_uri == name
        ]

    def data(self):
        """The panel data patched during the last event, merged."""
        merged = {}
        for params in self.requests("patch_panel_data"):
            merged.update(params["data"])
        return merged

    def app_set_view(self):
        """Applies the last ``set_view`` to the App view, as the App does;
        returns the view the serialized stages rebuild to."""
        (params,) = self.requests("set_view")
        self.request["view"] = params["view"]
        return fo.DatasetView._build(self.dataset, params["view"])


@pytest.fixture
def ds(fo_dataset):
    return build_dataset(fo_dataset)


@pytest.fixture
def session(ds):
    s = Session(make_panel(bp.MispredictionsPanel), ds)
    s.event("on_load")
    return s


def ids(view):
    return view.values("id")


def test_config():
    panel = make_panel(bp.MispredictionsPanel)
    assert panel.config.name == "bifta_mispredictions"
    assert panel.config.surfaces == "grid"
    modal = make_panel(bp.ExplanationPanel)
    assert modal.config.name == "bifta_explanation"
    assert modal.config.surfaces == "modal"


def test_on_load_state_and_data(session, ds):
    state = session.state
    assert state["fields"] == {
        "pred_field": "bifta",
        "gt_field": "ground_truth",
    }
    assert state["mode"] == "gt"
    assert state["metrics"]["num_samples"] == 16
    assert state["metrics"]["num_mistakes"] == 4
    assert state["pairs"][0] == {"gt": "cat", "pred": "dog", "count": 2}
    assert state["tagging"]["review_tag"] == "needs_review"
    heatmap = session.data()["confusion_matrix"]
    expected = ba.build_confusion_matrix(ds, "bifta", "ground_truth")
    assert heatmap["type"] == "heatmap"
    assert heatmap["x"] == heatmap["y"] == expected.classes
    assert heatmap["z"] == expected.matrix.tolist()
    bars = session.data()["class_accuracy"]
    assert bars["x"][0] == "cat" and bars["y"][0] == 0.5  # worst first


def test_matrix_click_sets_the_cell_view(session, ds):
    session.event("on_matrix_click", x="dog", y="cat", z=2)
    view = session.app_set_view()
    expected = ba.cell_view(ds, "bifta", "ground_truth", "cat", "dog")
    assert sorted(ids(view)) == sorted(ids(expected))
    assert len(view) == 2
    assert "predicted `dog`" in session.state["showing"]


def test_own_view_change_keeps_the_matrix(session, ds):
    session.event("on_matrix_click", x="dog", y="cat")
    session.app_set_view()
    session.event("on_change_view")
    # recognised as the panel's own view: nothing recomputed
    assert session.requests("patch_panel_data") == []
    assert session.state["metrics"]["num_samples"] == 16
    # another cell is still built on the whole dataset
    session.event("on_matrix_click", x="cat", y="dog")
    assert len(session.app_set_view()) == 1


def test_external_view_change_recomputes(session, ds):
    only_cats = ds.match(F("ground_truth.label") == "cat")
    session.request["view"] = only_cats._serialize()
    session.event("on_change_view")
    assert session.state["metrics"]["num_samples"] == 6
    assert session.state["metrics"]["num_mistakes"] == 3
    assert session.state["fields"]["pred_field"] == "bifta"  # kept
    # clicks now build on the user's view
    session.event("on_matrix_click", x="cat", y="cat")
    assert len(session.app_set_view()) == 3


def test_pair_row_action(session, ds):
    session.event("on_pair_action", row=0, path="pairs", event="show_pair")
    view = session.app_set_view()
    expected = ba.cell_view(ds, "bifta", "ground_truth", "cat", "dog")
    assert sorted(ids(view)) == sorted(ids(expected))
    session.event("on_pair_action", row=99)
    assert session.requests("set_view") == []


def test_class_bar_click(session, ds):
    session.event("on_class_click", x="cat", y=0.5)
    view = session.app_set_view()
    expected = ba.class_mistakes_view(ds, "bifta", "ground_truth", "cat")
    assert ids(view) == ids(expected)  # same order: confidence desc


@pytest.mark.parametrize(
    "method, setting, expected",
    [
        (
            "show_mistakes",
            None,
            lambda ds: ba.mistakes_view(ds, "bifta", "ground_truth"),
        ),
        (
            "show_confident_mistakes",
            ("actions", "min_confidence", 0.6),
            lambda ds: ba.confident_mistakes_view(
                ds, "bifta", "ground_truth", 0.6
            ),
        ),
        (
            "show_uncertain",
            ("actions", "max_margin", 0.15),
            lambda ds: ba.uncertain_view(ds, "bifta", 0.15),
        ),
        (
            "show_low_confidence",
            ("actions", "max_confidence", 0.5),
            lambda ds: ba.low_confidence_view(ds, "bifta", 0.5),
        ),
    ],
)
def test_buttons(session, ds, method, setting, expected):
    if setting is not None:  # the App writes input values into the state
        group, key, value = setting
        session.state[group][key] = value
    session.event(method)
    view = session.app_set_view()
    assert ids(view) == ids(expected(ds))
    assert len(view) > 0


def test_reset_view(session, ds):
    session.event("on_matrix_click", x="dog", y="cat")
    session.app_set_view()
    session.event("reset_view")
    assert len(session.requests("clear_view")) == 1
    assert session.state["base_view"] == []
    assert session.state["showing"] is None


def test_tag_current_view(session, ds):
    session.event("on_matrix_click", x="dog", y="cat")
    session.app_set_view()
    session.state["tagging"]["review_tag"] = "check_me"
    session.event("tag_view")
    expected = ba.cell_view(ds, "bifta", "ground_truth", "cat", "dog")
    assert sorted(ids(ds.match_tags("check_me"))) == sorted(ids(expected))
    assert ds.count_sample_tags() == {"check_me": 2}
    (note,) = session.requests("notify")
    assert "Tagged 2 samples" in note["message"]
    assert session.requests("reload_samples")
    session.state["tagging"]["review_tag"] = "  "
    session.event("tag_view")
    assert session.requests("notify")[0]["variant"] == "warning"


def test_search_and_top_n(session):
    session.event("on_change_top_n", value=2, path="filters.top_n")
    assert sorted(session.data()["confusion_matrix"]["x"]) == ["cat", "dog"]
    session.event("on_change_search", value="o", path="filters.search")
    assert session.state["filters"] == {"top_n": 2, "search": "o"}
    assert len(session.data()["confusion_matrix"]["x"]) == 2
    assert session.state["num_classes_total"] == 4


def test_change_fields(session, ds):
    session.event("on_change_gt_field", value=bp.NO_GT, path="fields.gt_field")
    assert session.state["mode"] == "no_gt"
    assert "confidence_histogram" in session.data()
    session.event("on_change_gt_field", value="ground_truth")
    assert session.state["mode"] == "gt"


def _walk(schema, path=()):
    """(path, property json) of every property of a rendered panel."""
    for name, prop in (schema.get("type", {}).get("properties") or {}).items():
        yield path + (name,), prop
        yield from _walk(prop, path + (name,))


def test_render_components(session):
    out = session.panel.render(session.ctx).to_json()
    props = {".".join(p): prop for p, prop in _walk(out)}
    for key in (
        "fields.pred_field",
        "fields.gt_field",
        "summary",
        "filters.search",
        "filters.top_n",
        "confusion_matrix",
        "pairs",
        "class_accuracy",
        "actions.all_mistakes",
        "actions.confident_mistakes",
        "actions.uncertain",
        "actions.reset",
        "tagging.review_tag",
        "tagging.tag_view",
    ):
        assert key in props, key
    heatmap = props["confusion_matrix"]["view"]
    assert heatmap["name"] == "PlotlyView"
    assert heatmap["on_click"] == (
        f"{PLUGIN}/bifta_mispredictions#on_matrix_click"
    )
    table = props["pairs"]["view"]
    assert table["name"] == "TableView"
    assert [c["key"] for c in table["columns"]] == ["gt", "pred", "count"]
    assert table["row_actions"][0]["on_click"].endswith("#on_pair_action")
    assert props["fields.pred_field"]["type"]["values"] == [
        "bifta",
        "ground_truth",
    ]
    assert "Accuracy** 71.4%" in props["summary"]["default"]
    # a markdown's value comes from the state when the key exists there
    assert "summary" not in session.state


def test_execute_runs_event_then_render(ds):
    s = Session(make_panel(bp.MispredictionsPanel), ds)
    s.event("execute", __method__="on_load")
    assert s.state["mode"] == "gt"
    (output,) = s.requests("show_panel_output")
    assert "confusion_matrix" in json.dumps(output)


def test_no_ground_truth_mode(fo_dataset):
    ds = build_dataset(fo_dataset)
    ds.delete_sample_field("ground_truth")
    s = Session(make_panel(bp.MispredictionsPanel), ds)
    s.event("on_load")
    assert s.state["fields"]["gt_field"] == bp.NO_GT
    assert s.state["mode"] == "no_gt"
    hist = s.data()["confidence_histogram"]
    assert sum(hist["y"]) == 15
    out = s.panel.render(s.ctx).to_json()
    props = {".".join(p) for p, _ in _walk(out)}
    assert "confidence_histogram" in props and "actions.uncertain" in props
    assert "confusion_matrix" not in props and "pairs" not in props
    # a bin click: exactly that bin's samples
    s.event("on_histogram_click", idx=19, x=0.975, y=2)
    view = s.app_set_view()
    # (the bin edges are the histogram's: 0.95 may fall in the bin below)
    assert len(view) == hist["y"][19] >= 1
    assert "owl1" in view.values("name")  # confidence 0.99
    s.event("on_histogram_click", idx=10)
    assert len(s.app_set_view()) == hist["y"][10]


def test_empty_dataset_renders_a_hint(fo_dataset):
    ds = fo_dataset()
    s = Session(make_panel(bp.MispredictionsPanel), ds)
    s.event("on_load")
    out = json.dumps(s.panel.render(s.ctx).to_json())
    assert "run_bifta" in out


# --- explanation panel -------------------------------------------------------
def test_explanation_panel(ds):
    sample = ds.match(F("name") == "cat4").first()
    sample["bifta_crops"] = fo.Detections(
        detections=[
            fo.Detection(
                label="best",
                bounding_box=[0.1, 0.2, 0.3, 0.4],
                confidence=0.6,
                best=True,
                description="a dog with floppy ears",
            ),
            fo.Detection(
                label="crop",
                bounding_box=[0, 0, 1, 1],
                confidence=0.4,
                best=False,
            ),
        ]
    )
    sample.save()
    ds.default_classes = CLASSES
    s = Session(make_panel(bp.ExplanationPanel), ds, current_sample=sample.id)
    s.event("on_load")
    text = s.state["explanation"]
    assert "**Predicted** `dog` (95.0%)" in text
    assert "**Runner-up** `fox` (5.0%)" in text
    assert "**Ground truth** `cat` (mistake)" in text
    assert "a dog with floppy ears" in text
    assert [r["rank"] for r in s.state["crops"]] == [1, 2]
    assert s.state["crops"][0]["best"] == "yes"
    (active,) = s.requests("set_active_fields")
    assert active["fields"] == ["bifta", "bifta_crops", "ground_truth"]
    assert s.data()["top_classes"]["y"][:2] == ["dog", "fox"]
    out = s.panel.render(s.ctx).to_json()
    props = {".".join(p) for p, _ in _walk(out)}
    assert {
        "pred_field",
        "explanation",
        "top_classes",
        "crops",
        "show_crops",
    } <= props
    # next sample: recomputed, active fields left alone
    other = ds.match(F("name") == "owl1").first()
    s.request["current_sample"] = other.id
    s.event("on_change_current_sample")
    assert "`owl`" in s.state["explanation"]
    assert s.state["crops"] == []
    assert s.requests("set_active_fields") == []


def test_explanation_panel_without_prediction(ds):
    failed = ds.match(F("name") == "fail").first()
    s = Session(make_panel(bp.ExplanationPanel), ds, current_sample=failed.id)
    s.event("on_load")
    assert s.state["explanation"] is None
    out = json.dumps(s.panel.render(s.ctx).to_json())
    assert "no prediction" in out
