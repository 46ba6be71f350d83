"""labels.py: pure ImagePrediction -> FiftyOne label conversion."""

import numpy as np
import pytest

import fiftyone as fo

from bifta_plugin.sdk import labels as bl
from bifta_plugin.engine.pipeline import ImagePrediction

CLASSES = ["cat", "dog", "car"]


def _prediction(**overrides):
    probs = np.array([0.2, 0.7, 0.1], dtype=np.float32)
    pred = ImagePrediction(
        index=0,
        key="/data/img.jpg",
        width=200,
        height=100,
        label="dog",
        label_index=1,
        scores=np.array([0.21, 0.25, 0.19], dtype=np.float32),
        logits=np.array([21.0, 25.0, 19.0], dtype=np.float32),
        probs=probs,
        confidence=0.7,
        margin=0.5,
        boxes=np.array([[0, 0, 100, 100], [50, 10, 150, 90], [100, 0, 200, 100]]),
        crop_weights=np.array([0.5, 0.3, 0.2], dtype=np.float32),
        best_crop=1,
        best_description="a dog with floppy ears",
    )
    for name, value in overrides.items():
        setattr(pred, name, value)
    return pred


def _failed():
    return ImagePrediction(index=3, key="bad.jpg", error="cannot read image bad.jpg")


# --- safe_field_names ----------------------------------------------------------
@pytest.mark.parametrize(
    "classes, expected",
    [
        (["cat", "Dog"], ["cat", "dog"]),
        (["Golden Retriever", "golden-retriever"], ["golden_retriever", "golden_retriever_2"]),
        (["7up", "  spaces  around "], ["c_7up", "spaces_around"]),
        (["!!!", "???"], ["c_", "c__2"]),
        (["a__b", "a b", "a-b", "a_b_2"], ["a_b", "a_b_2", "a_b_3", "a_b_2_2"]),
        (["Café crème", "naïve"], ["cafe_creme", "naive"]),
        (["id", "copy", "label"], ["c_id", "c_copy", "label"]),
        (["$price.tag", "_private"], ["price_tag", "private"]),
    ],
)
def test_safe_field_names_table(classes, expected):
    names = bl.safe_field_names(classes)
    assert list(names) == classes
    assert list(names.values()) == expected


def test_safe_field_names_are_valid_unique_and_deterministic():
    classes = ["A", "a", "a!", "1", "", "ü", "x" * 3, "X.X.X", "x x x", "ID"]
    first = bl.safe_field_names(classes)
    assert first == bl.safe_field_names(list(classes))
    values = list(first.values())
    assert len(set(values)) == len(values)
    for name in values:
        assert name and not name.startswith("_")
        assert not name[0].isdigit()
        assert all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in name)
        assert name not in bl.RESERVED_NAMES


def test_safe_field_names_work_as_document_fields():
    classes = ["id", "copy", "validate", "field_names", "7 up", "to_dict"]
    names = bl.safe_field_names(classes)
    doc = fo.DynamicEmbeddedDocument(**{n: 0.5 for n in names.values()})
    assert all(doc[n] == 0.5 for n in names.values())


def test_field_names():
    assert bl.field_names("pred") == {
        "label": "pred",
        "crops": "pred_crops",
        "scores": "pred_scores",
        "topk": "pred_topk",
        "error": "pred_error",
    }


# --- conversions ------------------------------------------------------------------
def test_to_classification():
    label = bl.to_classification(_prediction(), CLASSES)
    assert isinstance(label, fo.Classification)
    assert label.label == "dog"
    assert label.confidence == pytest.approx(0.7)
    # built from a list of floats in class order; FiftyOne's VectorField
    # hands it back as a float array
    assert np.asarray(label.logits).shape == (len(CLASSES),)
    assert list(label.logits) == pytest.approx([21.0, 25.0, 19.0])
    assert label.margin == pytest.approx(0.5)
    assert label.score == pytest.approx(0.25)
    assert not label.has_field("run_labels")


def test_to_classification_options():
    assert bl.to_classification(_prediction(), CLASSES, store_logits=False).logits is None
    label = bl.to_classification(_prediction(run_labels=[1, 0, 1]), CLASSES)
    assert label.run_labels == ["dog", "cat", "dog"]


def test_to_detections():
    dets = bl.to_detections(_prediction())
    assert isinstance(dets, fo.Detections)
    assert len(dets.detections) == 3
    boxes = np.array([d.bounding_box for d in dets.detections])
    assert boxes.min() >= 0 and (boxes[:, :2] + boxes[:, 2:]).max() <= 1
    np.testing.assert_allclose(boxes[1], [0.25, 0.1, 0.5, 0.8])
    assert [d.label for d in dets.detections] == ["crop", "best", "crop"]
    assert [d.best for d in dets.detections] == [False, True, False]
    assert dets.detections[1].description == "a dog with floppy ears"
    assert not dets.detections[0].has_field("description")
    assert [d.confidence for d in dets.detections] == pytest.approx([0.5, 0.3, 0.2])


def test_to_detections_without_crops():
    pred = _prediction(boxes=np.zeros((0, 4), np.int64), crop_weights=np.zeros(0), best_crop=None)
    assert bl.to_detections(pred).detections == []


def test_to_scores_and_topk():
    names = bl.safe_field_names(CLASSES)
    doc = bl.to_scores(_prediction(), names, CLASSES)
    assert {n: doc[n] for n in names.values()} == pytest.approx({"cat": 0.2, "dog": 0.7, "car": 0.1})
    topk = bl.to_topk(_prediction(), CLASSES, k=2)
    assert [c.label for c in topk.classifications] == ["dog", "cat"]
    assert [c.confidence for c in topk.classifications] == pytest.approx([0.7, 0.2])
    assert len(bl.to_topk(_prediction(), CLASSES, k=10).classifications) == 3


def test_failed_prediction_gives_no_labels():
    pred = _failed()
    out = bl.prediction_to_labels(pred, CLASSES, class_fields=bl.safe_field_names(CLASSES))
    assert out == {"label": None, "crops": None, "scores": None, "error": pred.error}


def test_prediction_to_labels_roles():
    pred = _prediction()
    out = bl.prediction_to_labels(pred, CLASSES, crops=False, class_fields=None, top_k=1)
    assert set(out) == {"label", "topk", "error"}
    assert out["error"] is None
    assert [c.label for c in out["topk"].classifications] == ["dog"]
    out = bl.prediction_to_labels(pred, CLASSES, class_fields=bl.safe_field_names(CLASSES))
    assert set(out) == {"label", "crops", "scores", "error"}


# --- stored dicts: what run_bifta writes ---------------------------------------------
def test_documents_match_fiftyone_serialisation():
    """Each stored dict equals FiftyOne's own ``to_mongo()`` of the label
    (up to ids, and logits kept as a plain list instead of FiftyOne's
    binary vector encoding)."""
    pred = _prediction(run_labels=[1, 1, 0])
    names = bl.safe_field_names(CLASSES)
    docs = bl.prediction_to_documents(pred, CLASSES, class_fields=names)
    docs_topk = bl.prediction_to_documents(pred, CLASSES, class_fields=None, top_k=2)

    cls_doc = dict(docs["label"])
    assert isinstance(cls_doc["logits"], list) and all(type(x) is float for x in cls_doc["logits"])
    expected = fo.Classification(
        label="dog",
        confidence=float(pred.confidence),
        margin=float(pred.margin),
        score=float(pred.scores[1]),
        run_labels=["dog", "dog", "cat"],
    ).to_mongo()
    _assert_same_son(cls_doc, expected, ignore=("_id", "logits"))

    dets = fo.Detections(
        detections=[
            fo.Detection(label=d["label"], bounding_box=d["bounding_box"], confidence=d["confidence"],
                         best=d["best"], **({"description": d["description"]} if d["best"] else {}))
            for d in docs["crops"]["detections"]
        ]
    ).to_mongo()
    _assert_same_son(docs["crops"], dets, ignore=("_id",))
    _assert_same_son(docs["scores"], bl.to_scores(pred, names, CLASSES).to_mongo(), ignore=())
    topk = fo.Classifications(
        classifications=[fo.Classification(label="dog", confidence=0.7), fo.Classification(label="cat", confidence=0.2)]
    ).to_mongo()
    _assert_same_son(docs_topk["topk"], topk, ignore=("_id",))


def _assert_same_son(actual, expected, ignore):
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in ignore}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return pytest.approx(x) if isinstance(x, float) else x

    assert clean(dict(actual)) == clean(dict(expected))
    assert list(clean(dict(actual))) == list(clean(dict(expected)))  # same key order


def test_objects_are_built_from_the_documents():
    pred = _prediction()
    label = bl.to_classification(pred, CLASSES)
    doc = bl.classification_doc(pred, CLASSES)
    assert label.label == doc["label"] and list(label.logits) == pytest.approx(doc["logits"])
    labels = bl.prediction_to_labels(pred, CLASSES, class_fields=None, top_k=3)
    assert isinstance(labels["label"], fo.Classification)
    assert isinstance(labels["crops"], fo.Detections)
    assert isinstance(labels["topk"], fo.Classifications)
