"""``crashsearch status``: running and recent campaigns (flows/status.py gathers them)."""
from __future__ import annotations


def add_arguments(p) -> None:
    """``status`` takes only --home."""


def run(args) -> int:
    """Print running and recent campaigns; 0 (also when there are none)."""
    from crashsearch.flows import status

    rows = status.campaign_status(args.home_dir)
    if not rows:
        print(f"no campaigns under {args.home_dir.location}")  # an s3 home: its URL, not the scratch
        return 0
    print(status.format_status(rows))
    return 0
