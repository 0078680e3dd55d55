"""The fail-fast rule (tasks.failfast) on its own, and the class checks (lab.classes)."""
from __future__ import annotations

import pytest

from crashsearch.lab.classes import ClassCheckError, check_counts, format_counts, split_counts
from crashsearch.tasks.failfast import FailFast


def _row(status="failed", error="MissingFeaturesError", cell=1, message=None):
    message = message or f"{error}: the train split of 'x' has only one class (0 positives of 9) [cell {cell}: a=1]"
    return {"status": status, "error_class": error if status == "failed" else None, "cell_id": cell,
            "error_message": message if status == "failed" else None, "backbone": "pixels", "encoder": "gru"}


def test_eight_same_failures_over_two_batches_stop_with_one_line():
    ff = FailFast()
    assert ff.observe([_row(cell=i) for i in range(6)]) is None
    stop = ff.observe([_row(cell=6), _row(cell=7)])
    assert stop is not None and stop.count == 8 and stop.error_class == "MissingFeaturesError"
    line = stop.line()
    assert "\n" not in line and "last 8 experiments" in line and "cell 0 (backbone=pixels encoder=gru)" in line
    assert "MissingFeaturesError: the train split of 'x' has only one class" in line and "[cell" not in line
    assert "MissingFeaturesError: MissingFeaturesError" not in line


def test_one_batch_alone_never_stops_the_campaign():
    """A vectorised group shares its fate: twelve failures of one shape are not yet systematic."""
    assert FailFast().observe([_row(cell=i) for i in range(12)]) is None


def test_a_success_or_another_error_class_resets_the_streak():
    ff = FailFast()
    assert ff.observe([_row(cell=i) for i in range(7)]) is None
    assert ff.observe([_row(status="ok")]) is None
    assert ff.observe([_row(cell=i) for i in range(7)]) is None
    assert ff.observe([_row(error="OOMError")]) is None
    assert ff.observe([_row(cell=i) for i in range(4)]) is None
    assert ff.observe([_row(cell=i) for i in range(4)]) is not None  # 1 OOM + 4, then 4 more of one class


def test_invalid_rows_are_not_experiments():
    ff = FailFast(streak=3)
    ff.observe([_row(), _row()])
    assert ff.observe([{"status": "invalid"}, _row()]) is not None


def test_an_advisor_hears_about_a_failure_signature_once():
    ff = FailFast()
    assert ff.first_time("ShapeError", "ShapeError: window_s=4.0 needs 17 steps [cell 3: a=1]")
    assert not ff.first_time("ShapeError", "ShapeError: window_s=2.0 needs 9 steps [cell 9: a=2]")
    assert ff.first_time("NaNLossError", "NaNLossError: loss became non-finite")


def test_class_counts_and_the_one_line_naming_the_split():
    counts = split_counts(["train", "train", "val", "val", "test"], [1, 0, 0, 0, 1])
    assert counts == {"train": (1, 1), "val": (0, 2), "test": (1, 0)}
    assert format_counts(counts) == "train 1 pos / 1 neg, val 0 pos / 2 neg, test 1 pos / 0 neg"
    with pytest.raises(ClassCheckError) as err:
        check_counts(counts, "ds/pixels")
    assert str(err.value).startswith("ds/pixels: the val split has no positives (0 pos / 2 neg)")
    assert "\n" not in str(err.value)
    check_counts({"train": (3, 4), "val": (1, 1), "test": (1, 2)}, "ok")
