"""Loading, matching and saving class descriptions (bifta_plugin.descriptions.files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bifta_plugin.descriptions.files import (
    DescriptionSet,
    load_classes,
    load_descriptions,
    mapping_sha256,
    normalize_name,
    save_descriptions,
    sidecar_path,
)
from bifta_plugin.core.classnames import dclip_sentence

SHARED = Path("/work/shared/descriptions")

CUPL = {
    "Black-footed Albatross": [
        "The albatross is a large seabird.",
        "It has a dark bill.",
    ],
    "sea_lion": ["A sea lion has flippers."],
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------
def test_json_cupl_verbatim_and_keyed_by_given_names(tmp_path):
    path = write(tmp_path, "d.json", json.dumps(CUPL))
    ds = load_descriptions(path, ["black-footed albatross", "Sea Lion"])
    assert ds.format == "cupl"
    assert ds.source == str(path)
    assert ds.descriptions == {
        "black-footed albatross": CUPL["Black-footed Albatross"],
        "Sea Lion": CUPL["sea_lion"],
    }
    assert ds.classes == ["black-footed albatross", "Sea Lion"]
    assert ds.report.missing == [] and ds.report.unmatched_keys == []
    assert ds.provenance == dict(source=str(path), format="cupl", sha256=ds.sha256)


def test_yaml_cupl_matches_json(tmp_path):
    yml = write(
        tmp_path,
        "d.yaml",
        "Black-footed Albatross:\n"
        "  - The albatross is a large seabird.\n"
        "  - It has a dark bill.\n"
        "sea_lion: [A sea lion has flippers.]\n",
    )
    js = write(tmp_path, "d.json", json.dumps(CUPL))
    a, b = load_descriptions(yml), load_descriptions(js)
    assert a.descriptions == b.descriptions == CUPL
    assert a.sha256 == b.sha256
    assert load_descriptions(write(tmp_path, "d.yml", yml.read_text())).descriptions == CUPL


def test_classes_default_to_file_keys_in_order(tmp_path):
    ds = load_descriptions(write(tmp_path, "d.json", json.dumps(CUPL)))
    assert ds.classes == list(CUPL)


def test_dclip_rule_and_antennae_quirk():
    descriptors = {
        "monarch_butterfly": [
            "antennae with clubbed tips",  # startswith("a") -> "which is", the quirk
            "an orange wing pattern",
            "used as a symbol",
            "has black veins",
            "often seen on milkweed",
            "typically migrates",
            "may be poisonous",
            "can fly far",
            "black and orange wings",
        ]
    }
    ds = load_descriptions(descriptors, ["Monarch_Butterfly"], format="dclip")
    assert ds.format == "dclip"
    texts = ds.descriptions["Monarch_Butterfly"]
    assert texts == [
        "Monarch Butterfly, which is antennae with clubbed tips",
        "Monarch Butterfly, which is an orange wing pattern",
        "Monarch Butterfly, which is used as a symbol",
        "Monarch Butterfly, which has black veins",
        "Monarch Butterfly, which often seen on milkweed",
        "Monarch Butterfly, which typically migrates",
        "Monarch Butterfly, which may be poisonous",
        "Monarch Butterfly, which can fly far",
        "Monarch Butterfly, which has black and orange wings",
    ]
    # The rule is text.dclip_sentence's, applied with the CLASS name given.
    assert texts == [
        dclip_sentence("Monarch_Butterfly", d) for d in descriptors["monarch_butterfly"]
    ]


def test_auto_never_picks_dclip():
    ds = load_descriptions({"cat": ["has whiskers"]})
    assert ds.format == "cupl"
    assert ds.descriptions == {"cat": ["has whiskers"]}


@pytest.mark.parametrize(
    "name, text",
    [
        ("t.json", json.dumps(["a photo of a {}.", "art of the {}."])),
        ("t.yaml", "- a photo of a {}.\n- art of the {}.\n"),
        ("t.txt", "# CLIP-E style\na photo of a {}.\n\n  art of the {}.  \n"),
    ],
)
def test_templates_formats(tmp_path, name, text):
    ds = load_descriptions(write(tmp_path, name, text), ["cat", "apple_pie"])
    assert ds.format == "templates"
    assert ds.descriptions == {
        "cat": ["a photo of a cat.", "art of the cat."],
        "apple_pie": ["a photo of a apple pie.", "art of the apple pie."],
    }


def test_templates_need_classes(tmp_path):
    with pytest.raises(ValueError, match="pass classes"):
        load_descriptions(["a photo of a {}."])


@pytest.mark.parametrize(
    "bad", ["a photo", "a {} and a {}", "a {0} photo", "a {name}", "a { photo"]
)
def test_templates_need_exactly_one_placeholder(bad):
    with pytest.raises(ValueError, match=r"template 1 must contain exactly one '\{\}'"):
        load_descriptions(["a photo of a {}.", bad], ["cat"])


def test_format_shape_mismatch():
    with pytest.raises(ValueError, match="needs an object"):
        load_descriptions(["a {}."], ["cat"], format="cupl")
    with pytest.raises(ValueError, match="needs a list of templates"):
        load_descriptions({"cat": ["x"]}, ["cat"], format="templates")
    with pytest.raises(ValueError, match="unknown descriptions format"):
        load_descriptions({"cat": ["x"]}, format="clip-d")


def test_txt_is_templates_only(tmp_path):
    path = write(tmp_path, "t.txt", "a photo of a {}.\n")
    with pytest.raises(ValueError, match=r"t\.txt.*templates"):
        load_descriptions(path, ["cat"], format="cupl")


# ----------------------------------------------------------------------------
# Matching report
# ----------------------------------------------------------------------------
def test_matching_report():
    source = {
        "Sea_Lion": ["A sea lion on a rock.", "a  SEA lion on a rock.", "   "],
        "sea lion": ["Sea lions bark."],
        "Golden Retriever": ["A golden dog.", "", "A golden dog."],
        "unicorn": ["A horse with a horn."],
    }
    ds = load_descriptions(source, ["sea lion", "golden_retriever", "Dodo"])
    r = ds.report
    # case- and underscore-insensitive; keyed by the names given
    assert list(ds.descriptions) == ["sea lion", "golden_retriever"]
    assert r.merged_keys == {"sea lion": ["Sea_Lion", "sea lion"]}
    # merged in file order, duplicates kept by default
    assert ds.descriptions["sea lion"] == [
        "A sea lion on a rock.",
        "a  SEA lion on a rock.",
        "Sea lions bark.",
    ]
    assert r.missing == ["Dodo"] and ds.missing_classes() == ["Dodo"]
    assert r.unmatched_keys == ["unicorn"]
    assert r.counts == {"sea lion": 3, "golden_retriever": 2, "Dodo": 0}
    assert r.duplicates == {"sea lion": 1, "golden_retriever": 1}
    assert r.total_duplicates == 2 and not r.deduped
    assert r.empty_dropped == 2
    text = ds.summary()
    for needle in ("2/3 classes", "'Dodo'", "'unicorn'", "2 exact duplicates", "dropped 2 empty"):
        assert needle in text


def test_dedupe_keeps_first_occurrence():
    source = {"cat": ["A cat.", "a  CAT.", "A dog-like cat.", "A cat."]}
    ds = load_descriptions(source, dedupe=True)
    assert ds.descriptions == {"cat": ["A cat.", "A dog-like cat."]}
    assert ds.report.duplicates == {"cat": 2} and ds.report.deduped
    assert ds.report.counts == {"cat": 2}


def test_repeated_json_keys_are_merged(tmp_path):
    path = write(
        tmp_path, "d.json", '{"cat": ["A cat."], "dog": ["A dog."], "cat": ["Cats purr."]}'
    )
    ds = load_descriptions(path)
    assert ds.descriptions == {"cat": ["A cat.", "Cats purr."], "dog": ["A dog."]}
    assert ds.report.merged_keys == {"cat": ["cat", "cat"]}


def test_repeated_class_names_share_descriptions():
    ds = load_descriptions({"arena": ["An arena."]}, ["arena", "arena", "Arena"])
    assert ds.classes == ["arena", "Arena"]
    assert ds.descriptions == {"arena": ["An arena."], "Arena": ["An arena."]}
    assert ds.report.duplicate_classes == ["arena", "Arena"]


def test_require_complete_names_missing_classes():
    ds = load_descriptions({"cat": ["A cat."], "cat_typo": ["x"]}, ["cat", "dog", "bird"])
    with pytest.raises(ValueError, match=r"2 class\(es\) have no descriptions.*'dog', 'bird'"):
        ds.require_complete()
    ok = load_descriptions({"cat": ["A cat."]}, ["cat"])
    assert ok.require_complete() is ok


def test_key_with_only_empty_entries_is_missing_not_unmatched():
    ds = load_descriptions({"cat": ["", "  "], "dog": ["A dog."]}, ["cat", "dog"])
    assert ds.report.missing == ["cat"] and ds.report.unmatched_keys == []
    assert "cat" not in ds.descriptions


def test_check_lengths_records_truncation():
    ds = load_descriptions({"cat": ["short.", "x " * 100], "dog": ["y " * 90]})
    seen = []

    def count_truncated(texts):
        seen.append(list(texts))
        return sum(len(t.split()) > 75 for t in texts)

    assert ds.report.truncated is None
    checked = ds.with_lengths_checked(count_truncated)
    assert checked.report.truncated == 2 and len(seen[0]) == 3
    assert "2 texts exceed the text encoder's context" in checked.summary()
    assert ds.report.truncated is None  # a value: the original is unchanged


def test_description_set_is_frozen():
    import dataclasses

    ds = load_descriptions({"cat": ["A cat."]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.source = "elsewhere"


# ----------------------------------------------------------------------------
# Malformed input
# ----------------------------------------------------------------------------
def test_bad_json_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "broken.json", '{\n  "cat": ["A cat."],\n  "dog": ["A dog."\n}\n')
    with pytest.raises(ValueError) as info:
        load_descriptions(path)
    message = str(info.value)
    assert "broken.json" in message and "line 4" in message and "column" in message


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "cat:\n  - A cat.\ndog: [A dog.\nbird: [x]\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: invalid YAML at line \d+, column \d+"):
        load_descriptions(path)


@pytest.mark.parametrize(
    "source, pattern",
    [
        ({"cat": "A cat."}, r"key 'cat' must be a list of strings; got a single string"),
        ({"cat": {"a": 1}}, r"key 'cat' must be a list of strings; got an object"),
        ({"cat": None}, r"key 'cat' must be a list of strings; got NoneType"),
        ({"cat": ["A cat.", 3]}, r"key 'cat', entry 1: expected a string, got int"),
        (["a photo of a {}.", None], r"entry 1: expected a string, got NoneType"),
    ],
)
def test_bad_values_name_the_key(source, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_descriptions(source, ["cat"])


def test_non_string_yaml_key(tmp_path):
    path = write(tmp_path, "d.yaml", "cat: [A cat.]\n1: [A number.]\n")
    with pytest.raises(ValueError, match=r"d\.yaml: key 1 is not a non-empty string.*quote"):
        load_descriptions(path)


@pytest.mark.parametrize("text", ["42", '"just a string"', "null"])
def test_top_level_must_be_object_or_list(tmp_path, text):
    with pytest.raises(ValueError, match="top level must be an object .* or a list"):
        load_descriptions(write(tmp_path, "d.json", text))


@pytest.mark.parametrize("name, text", [("e.json", ""), ("e.yaml", "  \n\n"), ("e.txt", "\n")])
def test_empty_file(tmp_path, name, text):
    with pytest.raises(ValueError, match=rf"{name}: the file is empty"):
        load_descriptions(write(tmp_path, name, text), ["cat"])


def test_yaml_with_only_comments_is_empty(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_descriptions(write(tmp_path, "c.yaml", "# nothing here\n"))


def test_txt_with_only_comments_has_no_templates(tmp_path):
    with pytest.raises(ValueError, match="no templates"):
        load_descriptions(write(tmp_path, "c.txt", "# nothing here\n"), ["cat"])


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"d\.csv: unknown descriptions file type '\.csv'"):
        load_descriptions(write(tmp_path, "d.csv", "cat,A cat."))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_descriptions(tmp_path / "nope.json")


def test_bad_classes():
    with pytest.raises(ValueError, match="list of class names"):
        load_descriptions({"cat": ["x"]}, "cat")
    with pytest.raises(ValueError, match="empty"):
        load_descriptions({"cat": ["x"]}, [])
    with pytest.raises(ValueError, match="non-empty strings"):
        load_descriptions({"cat": ["x"]}, ["cat", 3])


# ----------------------------------------------------------------------------
# Hashing, saving, sidecar, class lists
# ----------------------------------------------------------------------------
def test_sha256_is_stable_and_order_sensitive_within_lists():
    a = load_descriptions({"cat": ["A.", "B."], "dog": ["C."]})
    b = load_descriptions({"dog": ["C."], "cat": ["A.", "B."]})
    c = load_descriptions({"cat": ["B.", "A."], "dog": ["C."]})
    assert a.sha256 == b.sha256 == mapping_sha256({"dog": ["C."], "cat": ["A.", "B."]})
    assert a.sha256 != c.sha256
    assert len(a.sha256) == 64
    # pinned: the canonical form (sorted keys, compact separators, UTF-8)
    # must not drift between versions, or recorded provenance stops matching
    canonical = '{"cat":["A cat."]}'.encode("utf-8")
    assert mapping_sha256({"cat": ["A cat."]}) == hashlib.sha256(canonical).hexdigest()


def test_save_load_roundtrip_unicode(tmp_path):
    mapping = {"Crème brûlée": ["A custard with a caramelised top.", "Une crème brûlée."]}
    path = save_descriptions(mapping, tmp_path / "sub" / "out.json")
    text = path.read_text(encoding="utf-8")
    assert "brûlée" in text and "\n  " in text  # UTF-8, not \\u escapes; indented
    ds = load_descriptions(path)
    assert ds.descriptions == mapping
    assert ds.sha256 == mapping_sha256(mapping)
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temp file left
    save_descriptions(ds, path)  # a DescriptionSet works too
    assert load_descriptions(path).sha256 == ds.sha256


def test_save_rejects_non_json_and_bad_mapping(tmp_path):
    with pytest.raises(ValueError, match=r"must end with \.json"):
        save_descriptions({"cat": ["x"]}, tmp_path / "out.yaml")
    with pytest.raises(ValueError, match="'cat' must be a list of strings"):
        save_descriptions({"cat": "x"}, tmp_path / "out.json")


def test_sidecar_is_reported(tmp_path):
    path = save_descriptions({"cat": ["A cat."]}, tmp_path / "gen.json")
    sidecar_path(path).write_text(
        json.dumps({"model": "m1", "base_url": "http://x/v1", "date": "2026-01-01"})
    )
    ds = load_descriptions(path)
    assert ds.provenance["generation"]["model"] == "m1"
    assert "generated by m1" in ds.summary()
    sidecar_path(path).write_text("{not json")
    assert "generation" not in load_descriptions(path).provenance  # broken sidecar: ignored


def test_to_dict_is_json_serialisable():
    ds = load_descriptions({"cat": ["A cat."]}, ["cat", "dog"])
    d = json.loads(json.dumps(ds.to_dict()))
    assert d["descriptions"] == {"cat": ["A cat."]}
    assert d["report"]["missing"] == ["dog"]
    assert isinstance(ds, DescriptionSet)


def test_normalize_name():
    assert normalize_name("  Apple_Pie ") == normalize_name("apple   pie") == "apple pie"


def test_load_classes(tmp_path):
    assert load_classes(write(tmp_path, "c.json", '["cat", "dog", "cat"]')) == ["cat", "dog", "cat"]
    assert load_classes(write(tmp_path, "c.txt", "cat\n\n# comment\ndog\n")) == ["cat", "dog"]
    with pytest.raises(ValueError, match="must be a list"):
        load_classes(write(tmp_path, "c.yaml", "cat: 1\n"))


# ----------------------------------------------------------------------------
# The real files (optional: not part of the repo)
# ----------------------------------------------------------------------------
@pytest.mark.skipif(not SHARED.is_dir(), reason="shared descriptions folder absent")
@pytest.mark.parametrize(
    "dataset, classes, texts, duplicates",
    [
        ("cub", 200, 7842, 691),
        ("oxford_pet", 37, 1110, 35),
        ("dtd", 47, 2164, 90),
        ("food101", 101, 3030, 74),
        ("place365", 344, 8191, 678),
    ],
)
def test_real_files(dataset, classes, texts, duplicates):
    names = load_classes(SHARED / f"{dataset}_classes.json")
    ds = load_descriptions(SHARED / f"{dataset}_descriptions.json", names).require_complete()
    assert len(ds.descriptions) == classes
    assert ds.report.total == texts
    # docs/METHOD.md §5.5: exact duplicates after lower-casing
    assert ds.report.total_duplicates == duplicates
    assert ds.report.unmatched_keys == []
    if dataset == "place365":
        assert len(names) == 365 and ds.report.duplicate_classes
    if dataset == "food101":  # "apple_pie" finds the key "apple pie"
        assert "apple_pie" in ds.descriptions


def test_refinement_summary_reports_what_the_threshold_did():
    from bifta_plugin.descriptions.files import refinement_summary

    kept = [
        dict(label="Tabby Cat", candidates=50, kept=3),
        dict(label="dog", candidates=10, kept=10),
        dict(label="fox", candidates=12, kept=9),
    ]
    line = refinement_summary(kept)
    assert line.startswith("descriptions kept: 22 of 72 (per class min 3, median 9, max 10)")
    # most reduced first, untouched classes not listed, names kept as given
    assert line.endswith("most reduced: 'Tabby Cat' 50 -> 3, 'fox' 12 -> 9")
    assert refinement_summary([dict(label="a", candidates=4, kept=4)]) == (
        "descriptions kept: all 4 (1 classes)"
    )
    assert refinement_summary([]) == ""
