"""``crashsearch space``: describe a configuration space."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--space", default=None, help="space YAML (default: the 108,000-cell collision space)")


def run(args) -> int:
    from crashsearch.lab.space import Space

    print(Space.load(args.space).describe())
    return 0
