"""The report's numbers.json and report.md on a fixed synthetic history, pinned.

The files under tests/golden/report/ were written by the report before it became a list of
sections (issue 23 item 5); this test holds every later change to the same numbers and text.
After a deliberate change to the report, rewrite them with
``python tests/test_report_golden.py`` and say in the commit what changed and why.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "report"
VOLATILE = ("generated_at", "timings")  # the clock, not the report (and space_shares.fanova.seconds)


def _history():
    import pandas as pd

    from crashsearch.analysis.synthetic import synthetic_history

    df = synthetic_history(240, seed=2)
    base = pd.concat([synthetic_history(60, seed=3 + k, campaign=f"synthetic-baseline-{p}-s{k}", policies=(p,))
                     for p in ("random", "claude") for k in range(2)], ignore_index=True)
    other = synthetic_history(120, seed=9, campaign="night", dataset="synth-night")
    events = [{"id": "fix-1", "declared_at": df["finished_at"].iloc[80], "note": "fixed the window slicing"}]
    return df, base, other, events


def build(out: Path) -> tuple[dict, str]:
    """Build the pinned report into ``out``; returns (numbers without the volatile keys, report.md)."""
    from crashsearch.analysis.report import build_report

    df, base, other, events = _history()
    numbers = build_report(df, out, events=events, title="golden", baselines_df=base, other_datasets=other,
                           weights={"pixels": "random-init", "vjepa2": "facebook/vjepa2-vitl-fpc64-256"},
                           n_boot=20, seed=0, forecast_more=50, validation={"videos": 40, "positives": 20,
                                                                            "negatives": 20}, share_boot=4)
    numbers = {k: v for k, v in numbers.items() if k not in VOLATILE}
    if numbers["space_shares"]:  # the fit's wall time
        numbers["space_shares"]["fanova"].pop("seconds")
    md = re.sub(r"^Generated \S+\. ", "Generated <time>. ", (out / "report.md").read_text(), flags=re.M)
    return numbers, md


def _same(a, b, path="numbers"):
    """Equal, floats to 1e-9 relative (the last bits of a BLAS sum are not the report's business)."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{path}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_report_numbers_and_text_are_the_pinned_ones(tmp_path):
    numbers, md = build(tmp_path)
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    want = json.loads((GOLDEN / "numbers.json").read_text())
    _same(want, json.loads(json.dumps(numbers)))
    assert list(numbers) == list(want)  # the top-level order a reader of numbers.json sees
    assert md == (GOLDEN / "report.md").read_text()
    assert figures == json.loads((GOLDEN / "figures.json").read_text())


if __name__ == "__main__":  # rewrite the pinned files
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        numbers, md = build(Path(tmp))
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / "numbers.json").write_text(json.dumps(numbers, indent=2) + "\n")
        (GOLDEN / "report.md").write_text(md)
        (GOLDEN / "figures.json").write_text(json.dumps(sorted(p.name for p in (Path(tmp) / "figures").glob("*.png"))) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
