"""The review round trip through an annotation tool (Label Studio, CVAT, ...).

The queue (e.g. the samples a pre-label run tagged ``needs_review``) goes
out with FiftyOne's own annotation API, ``samples.annotate(anno_key,
backend="labelstudio", label_field=review_field, ...)``: the review field
holds the zero-shot top-1 label, which FiftyOne uploads as each task's
pre-annotation. FiftyOne's Label Studio exporter sends no scores, so
:func:`attach_topk_scores` then adds the runner-up classes as further
predictions and sets every prediction's ``score`` (Label Studio shows and
sorts by it) through Label Studio's REST API; the top-1 prediction is
updated last, so it stays the task's latest prediction.

:func:`load_review` loads the annotations back into the review field with
``load_annotations`` and marks the samples a person actually annotated
(``<review_field>_reviewed``: a task that only has pre-annotations comes back
with the top-1 label, but is not reviewed); :func:`review_agreement` reports
per predicted class how often reviewers kept the pre-label, and
:func:`bifta_plugin.sdk.accept.accept_labels` merges the reviewed labels into
ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REVIEWED_SUFFIX = "_reviewed"
MODEL_VERSION = "bifta-top{rank}"


@dataclass
class ReviewQueue:
    anno_key: str
    project_id: int | None
    num_tasks: int
    num_scored_predictions: int

    def message(self) -> str:
        return (
            f"{self.num_tasks:,} samples sent for review under {self.anno_key!r}"
            f" (project {self.project_id}); {self.num_scored_predictions:,} scored pre-annotations"
        )


def topk_predictions(samples, pred_field: str, classes, k: int = 3) -> dict:
    """``{sample id: [(class, probability), ...]}``, best first, at most ``k``.

    From the label's ``logits`` (one per class, in ``classes`` order; the
    probabilities are their softmax, as the run computed its confidence);
    a label without usable logits gives its top-1 with its confidence.
    """
    ids, labels, confs, logits = samples.values(
        ["id", f"{pred_field}.label", f"{pred_field}.confidence", f"{pred_field}.logits"]
    )
    out = {}
    for sid, label, conf, z in zip(ids, labels, confs, logits):
        if label is None:
            continue
        if z is None or len(z) != len(classes):
            out[sid] = [(label, conf)]
            continue
        z = np.asarray(z, dtype=float)
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")[: max(int(k), 1)]
        out[sid] = [(classes[i], float(p[i])) for i in order]
    return out


def send_for_review(
    samples,
    anno_key: str,
    *,
    pred_field: str,
    classes,
    review_field: str = "review",
    top_k: int = 3,
    backend: str = "labelstudio",
    url: str | None = None,
    api_key: str | None = None,
    project_name: str | None = None,
) -> ReviewQueue:
    """Send ``samples`` to the annotation tool with the top-k as pre-annotations.

    Args:
        samples: the review queue.
        anno_key: FiftyOne annotation run key.
        pred_field: the zero-shot prediction field.
        classes: the label choices (the run's classes, in logits order).
        review_field: the field the tool edits (holds the top-1 on upload,
            the reviewer's label after :func:`load_review`).
        top_k: pre-annotations per task (Label Studio; scores included).
        backend: a FiftyOne annotation backend (``"labelstudio"``,
            ``"cvat"``, ...); scores are attached for Label Studio only.
        url, api_key: the server (default: FiftyOne's annotation config).
        project_name: the tool's project name.

    Raises:
        ValueError: an empty queue, or ``review_field`` is ``pred_field``.
    """
    import fiftyone.core.fields as fof
    import fiftyone.core.labels as fol

    if review_field == pred_field:
        raise ValueError("review_field must differ from pred_field")
    topk = topk_predictions(samples, pred_field, list(classes), top_k)
    if not topk:
        raise ValueError(f"no sample of the queue has a {pred_field!r} prediction")
    queue = samples.select(list(topk))
    dataset = samples._root_dataset
    if dataset.get_field(review_field) is None:
        dataset.add_sample_field(
            review_field, fof.EmbeddedDocumentField, embedded_doc_type=fol.Classification
        )
    dataset.set_values(
        review_field,
        {sid: fol.Classification(label=t[0][0], confidence=t[0][1]) for sid, t in topk.items()},
        key_field="id",
    )
    kwargs = dict(url=url, api_key=api_key) if url else {}
    if project_name and backend == "labelstudio":
        kwargs["project_name"] = project_name
    results = queue.annotate(
        anno_key,
        backend=backend,
        label_field=review_field,
        label_type="classification",
        classes=list(classes),
        launch_editor=False,
        **kwargs,
    )
    scored = 0
    if backend == "labelstudio":
        scored = attach_topk_scores(results, topk, review_field, url=url, api_key=api_key)
    return ReviewQueue(anno_key, getattr(results, "project_id", None), len(topk), scored)


def attach_topk_scores(results, topk: dict, review_field: str, *, url, api_key) -> int:
    """Score the uploaded pre-annotations and add the runner-ups (Label Studio).

    Returns:
        The number of scored predictions on the server.
    """
    project = _project(results, url, api_key)
    count = 0
    for task_id, sid in results.uploaded_tasks.items():
        ranked = topk.get(sid) or []
        for rank, (label, p) in enumerate(ranked[1:], start=2):
            project.create_prediction(
                task_id,
                result=[_choice(review_field, label)],
                score=p,
                model_version=MODEL_VERSION.format(rank=rank),
            )
            count += 1
        if not ranked:
            continue
        for pred in project.get_task(task_id).get("predictions") or []:
            if not str(pred.get("model_version") or "").startswith("bifta-top"):
                project.make_request(
                    "PATCH",
                    f"/api/predictions/{pred['id']}",
                    json={"score": ranked[0][1], "model_version": MODEL_VERSION.format(rank=1)},
                )
                count += 1
    return count


def load_review(dataset, anno_key: str, *, url=None, api_key=None, cleanup: bool = False) -> list:
    """Load the annotations of ``anno_key``; returns the reviewed sample ids.

    The review field gets the tool's labels (``load_annotations``);
    ``<review_field>_reviewed`` is set True on the samples a person
    annotated and False on the others of the run.
    """
    import fiftyone.core.fields as fof

    kwargs = dict(url=url, api_key=api_key) if url else {}
    results = dataset.load_annotation_results(anno_key, **kwargs)
    review_field = next(iter(results.config.label_schema))
    sent = dataset.load_annotation_view(anno_key).values("id")
    if results.config.name == "labelstudio":
        reviewed = _labelled_in_label_studio(results, url, api_key)
    else:  # other backends have no pre-annotations: what comes back was reviewed
        reviewed = set(sent)
    dataset.load_annotations(anno_key, unexpected="keep", cleanup=cleanup, **kwargs)
    flag = review_field + REVIEWED_SUFFIX
    if dataset.get_field(flag) is None:
        dataset.add_sample_field(flag, fof.BooleanField)
    dataset.set_values(flag, {sid: sid in reviewed for sid in sent}, key_field="id")
    return sorted(reviewed)


def review_agreement(samples, pred_field: str, review_field: str) -> dict:
    """How often reviewers kept the zero-shot label, per predicted class.

    Only samples with ``<review_field>_reviewed`` True count.

    Returns:
        ``{"overall": {"n", "agreed", "rate"}, "classes": {class: {"n",
        "agreed", "rate", "changed_to": {label: count}}}}``.
    """
    view = samples.match({review_field + REVIEWED_SUFFIX: True})
    pred, truth = view.values([f"{pred_field}.label", f"{review_field}.label"])
    classes: dict = {}
    for p, t in zip(pred, truth):
        row = classes.setdefault(p, {"n": 0, "agreed": 0, "changed_to": {}})
        row["n"] += 1
        if p == t:
            row["agreed"] += 1
        else:
            row["changed_to"][t] = row["changed_to"].get(t, 0) + 1
    for row in classes.values():
        row["rate"] = row["agreed"] / row["n"]
    n, agreed = len(pred), sum(r["agreed"] for r in classes.values())
    return {
        "overall": {"n": n, "agreed": agreed, "rate": agreed / n if n else None},
        "classes": dict(sorted(classes.items(), key=lambda kv: str(kv[0]))),
    }


def _labelled_in_label_studio(results, url, api_key) -> set:
    project = _project(results, url, api_key)
    labeled = set(project.get_labeled_tasks_ids())
    return {sid for tid, sid in results.uploaded_tasks.items() if tid in labeled}


def _project(results, url, api_key):
    import label_studio_sdk as ls

    url = url or results.config.url
    api_key = api_key or results.config.api_key
    return ls.Client(url, api_key).get_project(results.project_id)


def _choice(from_name: str, label: str) -> dict:
    return {
        "from_name": from_name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [label]},
    }
