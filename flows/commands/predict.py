"""``crashsearch predict``: run a packaged detector on videos (tasks/predict.py) and write or print the table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from crashsearch.lab.errors import UserError


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="a package folder written by `crashsearch champion`, or the "
                   "s3://.../campaigns/<id>/champion URL of the nightly package of an s3:// home")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files, folders of videos, or a dataset manifest")
    p.add_argument("--out", default=None, help="write the results to FILE.csv or FILE.json (default: print)")
    p.add_argument("--plots", default=None, metavar="DIR", help="one PNG per video: risk over time, threshold, event")
    p.add_argument("--device", default="auto", help="backbone device: auto, cpu, cuda")


def summary_line(predictions, threshold: float) -> str | None:
    """With labels (a manifest): AP of max_risk, and the share of positives alerted before their event
    with the median margin. None without labels."""
    import numpy as np

    from crashsearch.tasks.evaluate import average_precision

    labelled = [p for p in predictions if p.label is not None]
    if not labelled:
        return None
    labels = np.array([p.label for p in labelled])
    ap = average_precision([p.max_risk for p in labelled], labels)
    positives = [p for p in labelled if p.label == 1 and p.event_s is not None]
    early = [p.margin_s for p in positives if p.margin_s is not None and p.margin_s > 0]
    false_alerts = sum(1 for p in labelled if p.label == 0 and p.alert_s is not None)
    margin = f", median margin {np.median(early):.2f} s" if early else ""
    return (f"AP of max_risk {ap:.4f} over {len(labelled)} labelled videos ({int(labels.sum())} positive, chance "
            f"{labels.mean():.3f}); alerts before the event: {len(early)}/{len(positives)} positives{margin}; "
            f"{false_alerts}/{int((labels == 0).sum())} negatives alerted (threshold {threshold:.4f})")


def write_table(rows: list[dict], out: Path) -> None:
    """Write rows to .csv or .json atomically. Raises ValueError for another suffix."""
    suffix = out.suffix.lower()
    if suffix == ".json":
        data = (json.dumps(rows, indent=1) + "\n").encode()
    elif suffix == ".csv":
        import pandas as pd

        data = pd.DataFrame(rows).to_csv(index=False).encode()
    else:
        raise UserError(f"--out {out}: write .csv or .json")
    from crashsearch.lab._io import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(data))


def run(args) -> int:
    from crashsearch.tasks.predict import predict

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--out {out}: write .csv or .json")
    done = predict(args.model, args.paths, plots=args.plots, device=args.device)
    rows = [p.row() for p in done.predictions]
    if out is not None and rows:
        write_table(rows, out)
    elif rows:
        import pandas as pd

        print(pd.DataFrame(rows).to_string(index=False, na_rep=""))
    if not rows:
        print(f"predict: no video could be predicted ({len(done.failures)} failed)", file=sys.stderr)
        return 1
    line = summary_line(done.predictions, done.threshold)
    print(f"predicted {len(rows)} videos ({len(done.failures)} failed) in {done.seconds:.1f} s "
          f"({done.videos_per_s:.2f} videos/s)" + (f" -> {out}" if out else ""), file=sys.stderr)
    if line:
        print(line, file=sys.stderr)
    return 0
