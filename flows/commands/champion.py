"""``crashsearch champion``: package a campaign's leader (or a chosen cell) as a detector (tasks/champion.py)."""
from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--campaign", required=True)
    p.add_argument("--cell", type=int, default=None, help="the cell id to package (default: the leader)")
    p.add_argument("--out", required=True, help="the package folder, or an s3://bucket/path URL to publish it to "
                   "(`predict --model URL` reads it)")


def run(args) -> int:
    """Write the package and print where it is and its headline figures."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.storage import is_url
    from crashsearch.tasks.champion import write_champion

    if not is_url(args.out):
        card = write_champion(args.home_dir, args.campaign, Path(args.out), cell_id=args.cell)
    else:  # built in a local temp folder (the ONNX exporter writes files), then put on the store, card last
        import tempfile

        from crashsearch.lab.storage import backend_for
        from crashsearch.tasks.champion import publish_package

        backend = backend_for(args.out.rstrip("/"))  # one line for a URL of a scheme with no backend
        home = args.home_dir.url
        if home and (backend.root == home or backend.root.startswith(home + "/")):
            raise UserError(f"--out {args.out} is inside the home: the home's package is the nightly flow's "
                            f"(campaigns/<id>/champion/); publish this one elsewhere")
        with tempfile.TemporaryDirectory(prefix="crashsearch-champion-") as tmp:
            card = write_champion(args.home_dir, args.campaign, Path(tmp) / "pkg", cell_id=args.cell)
            publish_package(Path(tmp) / "pkg", backend, "")
    packaged, rep = card["package_run"], card["replicates"]["test_ap"]
    note = " (RANDOM backbone weights)" if card["backbone"]["random"] else ""
    ci = f" [{rep['ci_lo']:.4f}, {rep['ci_hi']:.4f}]" if rep["ci_lo"] is not None else ""
    onnx = "ONNX checked" if card["onnx"].get("checked") else ("ONNX not checked" if card["onnx"]["exported"]
                                                                 else "no ONNX")
    print(f"champion of {card['campaign']}: cell {card['cell_id']}{note}, run {packaged['experiment_id']} "
          f"({packaged['origin']} weights); test AP {packaged['evaluated']['test_ap']:.4f}, over {rep['n']} seed(s) "
          f"{rep['mean']:.4f}{ci}; alert threshold {card['threshold']['value']:.4f}; {onnx} -> {args.out}")
    return 0
