"""``crashsearch extract``: run the extract flow (flows/extract.py) unless the features are cached."""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True, help="dataset folder (Nexar train.csv or generic CSV)")
    p.add_argument("--backbone", required=True, help="backbone name, e.g. vjepa2_vitl, r2plus1d_18, pixels")
    p.add_argument("--weights", default="auto", help="auto (pretrained if available, else random), random, or a local path / hub id")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2, help="decoder workers")


def run(args) -> int:
    """0 on success (some videos may have failed), 1 when nothing could be extracted or a split lacks
    a class, 2 for a bad dataset, backbone or weights argument."""
    from crashsearch.flows import extract
    from crashsearch.flows.runtime import quiet_prefect
    from crashsearch.lab.datasets import DatasetError, load_dataset
    from crashsearch.lab.settings import Home
    from crashsearch.models.backbones import WeightsUnavailable, check_weights, list_backbones
    from crashsearch.tasks.extract import find_cached

    # an object-store home by its URL: its scratch folder is not where the features go
    home = args.home_dir.location if isinstance(args.home_dir, Home) else args.home_dir
    # argument errors fail here, before a Prefect server starts for nothing
    if args.backbone not in list_backbones():
        print(f"extract: unknown backbone {args.backbone!r}; registered: {', '.join(list_backbones())}", file=sys.stderr)
        return 2
    try:
        load_dataset(args.dataset)
        check_weights(args.backbone, args.weights)
    except (DatasetError, WeightsUnavailable) as exc:
        print(f"extract: {exc}", file=sys.stderr)
        return 2
    dataset = str(Path(args.dataset).expanduser())
    try:
        # a cache hit is answered here, in a second; a flow run would first start a Prefect server (~10 s)
        summary = find_cached(dataset, args.backbone, home=home, weights=args.weights, device=args.device)
        if summary is None:
            with quiet_prefect():
                summary = extract.extract_flow(dataset=dataset, backbone=args.backbone, home=str(home) if home else None,
                                               weights=args.weights, device=args.device, workers=args.workers)
    except (DatasetError, WeightsUnavailable) as exc:
        print(f"extract: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # unknown backbone: the message lists the registered names
        print(f"extract: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    if summary["videos_ok"] == 0:
        print(f"extract: no video of {summary['dataset']} could be extracted; see {summary['path']}/failures.json",
              file=sys.stderr)
        return 1
    if summary.get("class_problem"):  # the features are cached, but no campaign can use them
        print(f"extract: {summary['class_problem']}", file=sys.stderr)
        return 1
    return 0
