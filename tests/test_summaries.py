"""sdk.summaries: the run summary table, the run list and the time estimate
(pure functions of run info dicts)."""

from bifta_plugin.sdk import summaries as bs


def _info(key, stamp, model="ViT-B-32", method="bifta", rate=None, device="cpu",
          accuracy=None, processed=10):
    results = {"num_samples": processed, "num_processed": processed}
    if rate is not None:
        results.update(images_per_s=rate, device=device, elapsed_s=processed / rate)
    if accuracy is not None:
        results["accuracy"] = accuracy
    return {
        "key": key, "timestamp": stamp, "model_name": model, "method": method,
        "pretrained": "openai", "classes": ["cat", "dog"], "gt_field": "gt",
        "label_field": key, "status": "completed", "results": results,
        "fields": {"label": key, "scores": f"{key}_scores"},
    }


def test_summary_rows_are_short_and_readable():
    info = _info("r1", "2025-03-04T05:06:07+00:00", rate=4.0, accuracy=0.875, processed=412)
    rows = dict(bs.run_summary_rows(info))
    assert list(rows) == [
        "Run", "Status", "Method", "Model", "Classes", "Samples", "Accuracy",
        "Date", "Duration", "Throughput", "Fields written",
    ]
    assert rows["Accuracy"] == "87.5% vs `gt`"
    assert rows["Date"] == "2025-03-04 05:06 UTC"
    assert rows["Duration"] == "2 min"  # 412 / 4 s
    assert rows["Samples"] == "412 (412 classified)"
    assert rows["Fields written"] == "`r1`, `r1_scores`"
    table = bs.run_summary_markdown(info)
    assert table.count("\n") == len(rows) + 1


def test_run_list_is_newest_first():
    rows = bs.run_list_rows([_info("old", "2025-01-01T00:00:00", accuracy=0.5),
                             _info("new", "2025-02-01T00:00:00")])
    assert [r["key"] for r in rows] == ["new", "old"]
    assert rows[1]["accuracy"] == "50.0%" and rows[0]["accuracy"] == "n/a"
    assert rows[0]["model"] == "ViT-B-32" and rows[0]["method"] == "bifta"


def test_estimate_uses_the_last_matching_run():
    infos = [
        _info("a", "2025-01-01T00:00:00", rate=1.0),
        _info("b", "2025-01-02T00:00:00", rate=2.0),
        _info("c", "2025-01-03T00:00:00", rate=50.0, method="clip"),
        _info("d", "2025-01-04T00:00:00", rate=9.0, model="RN50"),
    ]
    e = bs.estimate_run(infos, num_todo=412, num_done=88, model_name="ViT-B-32",
                        method="bifta", device="auto")
    assert e.basis == "b" and e.seconds == 206
    assert e.message.startswith("412 samples to classify (88 already done, skipped); about 3 min on cpu")
    assert "'b': 2 images/s" in e.message


def test_no_estimate_without_a_basis():
    infos = [_info("a", "2025-01-01T00:00:00", rate=None),
             _info("b", "2025-01-02T00:00:00", rate=3.0, device="cuda:0")]
    e = bs.estimate_run(infos, num_todo=5, num_done=0, model_name="ViT-B-32",
                        method="bifta", device="cpu")
    assert e.seconds is None and e.basis is None
    assert "no time estimate" in e.message and "min" not in e.message
    assert bs.estimate_run([], num_todo=0, num_done=3, model_name="x",
                           method="clip").message.endswith("nothing to do")


def test_format_duration():
    assert [bs.format_duration(s) for s in (None, 0.2, 45, 179, 3600, 4800)] == [
        "n/a", "1 s", "45 s", "3 min", "1 h", "1 h 20 min"]
