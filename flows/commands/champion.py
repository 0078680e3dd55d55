"""``crashsearch champion``: package a campaign's leader (or a chosen cell) as a detector (tasks/champion.py)."""
from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--campaign", required=True)
    p.add_argument("--cell", type=int, default=None, help="the cell id to package (default: the leader)")
    p.add_argument("--out", required=True, help="the package folder")


def run(args) -> int:
    """Write the package and print where it is and its headline figures."""
    from crashsearch.tasks.champion import write_champion

    card = write_champion(args.home_dir, args.campaign, Path(args.out), cell_id=args.cell)
    packaged, rep = card["package_run"], card["replicates"]["test_ap"]
    note = " (RANDOM backbone weights)" if card["backbone"]["random"] else ""
    ci = f" [{rep['ci_lo']:.4f}, {rep['ci_hi']:.4f}]" if rep["ci_lo"] is not None else ""
    onnx = "ONNX checked" if card["onnx"].get("checked") else ("ONNX not checked" if card["onnx"]["exported"]
                                                                 else "no ONNX")
    print(f"champion of {card['campaign']}: cell {card['cell_id']}{note}, run {packaged['experiment_id']} "
          f"({packaged['origin']} weights); test AP {packaged['evaluated']['test_ap']:.4f}, over {rep['n']} seed(s) "
          f"{rep['mean']:.4f}{ci}; alert threshold {card['threshold']['value']:.4f}; {onnx} -> {args.out}")
    return 0
