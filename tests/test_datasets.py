"""Manifest loading (Nexar and generic layouts), row-level problems, splits and the manifest hash."""
from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from crashsearch.lab.datasets import DatasetError, load_dataset, stratified_split


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # loading never decodes, so empty files stand in for videos
    return path


def _nexar(root: Path, lines: list[str], videos: list[int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("\n".join(["id,time_of_event,time_of_alert,target", *lines]) + "\n")
    for vid in videos:
        _touch(root / "train" / f"{vid:05d}.mp4")
    return root


def test_nexar_layout_loads_with_padded_ids(tmp_path):
    root = _nexar(tmp_path / "nexar", ["1924,,,0", "822,19.5,18.633,1", "7,8.25,,1"], [1924, 822, 7])
    ds = load_dataset(root)
    assert (ds.layout, ds.name, ds.root, ds.problems) == ("nexar", "nexar", root.resolve(), [])
    by_id = {v.id: v for v in ds.videos}
    assert set(by_id) == {"01924", "00822", "00007"}
    pos = by_id["00822"]
    assert (pos.label, pos.event_time, pos.alert_time) == (1, 19.5, 18.633)
    assert pos.path == (root / "train" / "00822.mp4").resolve() and pos.path.is_absolute()
    assert (by_id["01924"].label, by_id["01924"].event_time, by_id["01924"].alert_time) == (0, None, None)
    assert by_id["00007"].alert_time is None
    # the CSV file itself works too
    assert [v.id for v in load_dataset(root / "train.csv").videos] == [v.id for v in ds.videos]


def test_generic_layout_relative_absolute_and_duplicate_stems(tmp_path):
    root = tmp_path / "clips"
    a = _touch(root / "day" / "a.mp4")
    b = _touch(root / "night" / "a.mp4")  # same stem as the first: ids must stay unique
    c = _touch(tmp_path / "elsewhere" / "c.mp4")
    (root / "labels.csv").write_text(f"path,label,event_time\nday/a.mp4,1,4.5\nnight/a.mp4,0,\n{c},0,\n")
    for given in (root, root / "labels.csv"):
        ds = load_dataset(given)
        assert ds.layout == "generic" and ds.problems == []
        assert {v.path for v in ds.videos} == {a.resolve(), b.resolve(), c.resolve()}
        ids = [v.id for v in ds.videos]
        assert len(set(ids)) == 3 and "c" in ids
        assert all(i.startswith("a-") for i in ids if i != "c")
        first = next(v for v in ds.videos if v.path == a.resolve())
        assert (first.label, first.event_time) == (1, 4.5)
    assert load_dataset(root).name == "clips" and load_dataset(root / "labels.csv").name == "labels"


def test_bad_rows_become_problem_lines_and_the_rest_loads(tmp_path):
    lines = [
        "1,7.5,6.9,1",  # line 2: good
        "2,,,0,extra",  # line 3: wrong column count
        "3,,,2",  # line 4: label not 0/1
        "4,abc,,1",  # line 5: event not a number
        "5,,,1",  # line 6: positive without an event time
        "1,,,0",  # line 7: duplicate id
        "x9,,,0",  # line 8: id not a number
        "6,-2,,1",  # line 9: negative time
        "",  # blank lines are ignored
        "7,,,0",  # line 11: good, but its video is missing
        "8,,,0",  # line 12: good
    ]
    root = _nexar(tmp_path / "ds", lines, [1, 2, 3, 4, 5, 6, 8])
    ds = load_dataset(root)
    assert sorted(v.id for v in ds.videos) == ["00001", "00008"]
    assert ds.problems == [
        "train.csv row 3: 5 columns, expected 4",
        "train.csv row 4: target '2' is not 0 or 1",
        "train.csv row 5: time_of_event 'abc' is not a number",
        "train.csv row 6: positive (target 1) without time_of_event",
        "train.csv row 7: duplicate id 00001 (first at train.csv row 2)",
        "train.csv row 8: id 'x9' is not a non-negative integer",
        "train.csv row 9: time_of_event '-2' is not a time in seconds (finite, >= 0)",
        "train.csv row 11: video train/00007.mp4 not found",
    ]


def test_generic_bad_rows_and_missing_video(tmp_path):
    root = tmp_path / "g"
    _touch(root / "ok.mp4")
    _touch(root / "pos.mp4")
    (root / "m.csv").write_text("path,label,event_time\nok.mp4,0,\npos.mp4,1,\nmissing.mp4,0,\nok.mp4,1,3\n,0,\n")
    ds = load_dataset(root)
    assert [v.id for v in ds.videos] == ["ok"]
    assert ds.problems == [
        "m.csv row 3: positive (label 1) without event_time",
        "m.csv row 4: video missing.mp4 not found",
        "m.csv row 5: duplicate path ok.mp4 (first at m.csv row 2)",
        "m.csv row 6: empty path",
    ]


@pytest.mark.parametrize("content, expected", [
    ("video,y\na.mp4,1\n", "unknown header 'video,y'"),
    ("", "empty file"),
    ("id,target\n1,0\n", "unknown header 'id,target'"),
])
def test_bad_header_is_a_dataset_error_naming_file_and_columns(tmp_path, content, expected):
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    msg = str(err.value)
    assert "train.csv" in msg and expected in msg
    assert "id,time_of_event,time_of_alert,target" in msg and "path,label,event_time" in msg


def test_folder_without_or_with_several_manifests(tmp_path):
    with pytest.raises(DatasetError, match="no manifest found"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope")
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("path,label,event_time\n")
    (tmp_path / "notes.csv").write_text("x,y\n")  # unrelated CSVs are ignored
    with pytest.raises(DatasetError, match=r"several manifests \(a.csv, b.csv\)"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path / "a.csv").videos == []


def test_stratified_split_is_deterministic_and_stratified():
    items = [(f"v{i:03d}", int(i < 40)) for i in range(100)]  # 40 positives, 60 negatives
    split = stratified_split(items, seed=3)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert stratified_split(shuffled, seed=3) == split  # row order does not matter
    assert stratified_split(items, seed=4) != split  # the seed does
    counts = Counter((split[i], y) for i, y in items)
    assert counts == {("train", 1): 28, ("val", 1): 6, ("test", 1): 6,
                      ("train", 0): 42, ("val", 0): 9, ("test", 0): 9}


def test_small_labels_still_reach_every_split():
    split = stratified_split([("a", 1), ("b", 1), ("c", 1), ("d", 0), ("e", 0), ("f", 0), ("g", 0)])
    for label_ids in (("a", "b", "c"), ("d", "e", "f", "g")):
        assert {split[i] for i in label_ids} == {"train", "val", "test"}
    assert stratified_split([("a", 1), ("b", 0)]) == {"a": "train", "b": "train"}
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        stratified_split([("a", 1), ("a", 0)])
    with pytest.raises(ValueError, match="fractions"):
        stratified_split([("a", 1)], fractions=(0.5, 0.5, 0.5))


def test_load_splits_and_hash_ignore_row_order_and_location(tmp_path):
    lines = [f"{i},{7 + i / 10:.1f},,1" if i % 3 == 0 else f"{i},,,0" for i in range(30)]
    first = load_dataset(_nexar(tmp_path / "a", lines, list(range(30))))
    shuffled = lines[:]
    random.Random(0).shuffle(shuffled)
    second = load_dataset(_nexar(tmp_path / "b", shuffled, list(range(30))))
    assert {v.id: v.split for v in first.videos} == {v.id: v.split for v in second.videos}
    assert first.manifest_hash() == second.manifest_hash()  # same content, other folder and order
    for split in ("train", "val", "test"):
        assert {v.label for v in first.by_split(split)} == {0, 1}
    assert sum(len(first.by_split(s)) for s in ("train", "val", "test")) == 30
    with pytest.raises(ValueError, match="unknown split"):
        first.by_split("dev")

    changed = lines[:]
    changed[0] = "0,7.05,,1"
    shutil.rmtree(tmp_path / "b")
    assert load_dataset(_nexar(tmp_path / "b", changed, list(range(30)))).manifest_hash() != first.manifest_hash()
    assert len(first.manifest_hash()) == 64


def test_an_optional_split_column_is_kept_and_hashed_and_checked(tmp_path):
    """DAD and CCD ship official splits; synth writes one for the demo's larger val and test splits."""
    from crashsearch.lab.synth import generate

    ds = generate(tmp_path / "s", videos=8, seed=2, width=32, height=32, fps=4, seconds=3.0,
                  split_fractions=(0.5, 0.25, 0.25))
    assert (ds.root / "train.csv").read_text().splitlines()[0] == "id,time_of_event,time_of_alert,target,split"
    counts = {s: [v.label for v in ds.by_split(s)] for s in ("train", "val", "test")}
    assert {s: (sum(c), len(c) - sum(c)) for s, c in counts.items()} == {"train": (2, 2), "val": (1, 1), "test": (1, 1)}
    assert all(v.split_given for v in ds.videos)
    manifest = ds.root / "train.csv"
    lines = manifest.read_text().splitlines()
    moved = lines[1].rsplit(",", 1)[0] + "," + ("val" if lines[1].endswith("train") else "train")
    manifest.write_text("\n".join([lines[0], moved, lines[2] + "x", *lines[3:]]) + "\n")
    again = load_dataset(ds.root)
    assert again.manifest_hash() != ds.manifest_hash()  # a named split is data
    assert [p.split(": ", 1)[1] for p in again.problems] == [f"split '{lines[2].rsplit(',', 1)[1]}x' is not one of "
                                                             "train, val, test (or empty)"]
    with pytest.raises(ValueError, match="fractions"):
        generate(tmp_path / "bad", videos=2, split_fractions=(0.5, 0.5, 0.5))
