"""``crashsearch analyze``: optional control arms, then the analyze flow (flows/analyze.py); prints the headline."""
from __future__ import annotations

import sys


def add_arguments(p) -> None:
    p.add_argument("--campaign", required=True)
    p.add_argument("--control-arms", default=None, metavar="POLICIES",
                   help="first train from-scratch arms (any of random,tpe,evolution,claude,gemini), each policy alone "
                        "with the campaign's budget, dataset, space and backbones; an arm already complete is reused")
    p.add_argument("--repeats", type=int, default=3, metavar="R",
                   help="independent seeds per control arm (default 3): the verdict's intervals are over repeats")


def run(args) -> int:
    """Run the flow, print the headline numbers and the report path."""
    from crashsearch.flows import analyze
    from crashsearch.flows.runtime import quiet_prefect
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.store import Store

    try:
        # a wrong id fails here in one line, before a Prefect server starts
        Store(args.home_dir).require_campaign(args.campaign, experiments=True)
        analyze.require_finished(Store(args.home_dir).experiments(args.campaign), args.campaign)
        if getattr(args, "control_arms", None):
            _control_arms(args)
        with quiet_prefect():
            result = analyze.analyze_flow(campaign=args.campaign, home=args.home_dir.location)
    except UserError as exc:  # anything else is a bug, not the user's: flows/cli.py reports it
        print(f"analyze: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(analyze.headline_text(result))
    return 0


def _control_arms(args) -> None:
    """Train the ``--control-arms`` of the campaign (``--repeats`` seeds each). Raises UserError in one line."""
    from crashsearch.agents import list_policies
    from crashsearch.flows.analyze import run_control_arms
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.store import Store

    parent = next((c for c in Store(args.home_dir).campaigns() if c["id"] == args.campaign), {})
    if not parent.get("dataset_path") or not parent.get("budget"):
        raise UserError(f"campaign {args.campaign!r} has no dataset path or budget in its campaign.json")
    repeats = int(getattr(args, "repeats", 3) or 0)
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    policies = tuple(p.strip() for p in args.control_arms.split(",") if p.strip())
    unknown = [p for p in policies if p not in list_policies()]
    if unknown or not policies:
        raise UserError(f"--control-arms: unknown policy {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(list_policies())}")
    arms = run_control_arms(args.home_dir, parent["dataset_path"], args.campaign, int(parent["budget"]),
                            policies=policies, seeds=repeats)
    print(f"control arms trained: {', '.join(arms) or 'none'}")
