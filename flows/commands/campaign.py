"""``crashsearch campaign``: check the settings, take the campaign's lock, run the campaign flow
(flows/campaign.py) and print the summary. Every flag, default and help comes from CampaignConfig."""
from __future__ import annotations

import json
import sys
import time

from crashsearch.tasks.campaign.config import add_cli_arguments  # light: no torch


def add_arguments(p) -> None:
    add_cli_arguments(p)  # every flag, default and help from CampaignConfig
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print Prefect's per-batch task logs (the Prefect UI always has them)")


def run(args) -> int:
    """Run the campaign flow and print the summary."""
    from crashsearch.flows import campaign
    from crashsearch.flows.runtime import quiet_prefect
    from crashsearch.lab.campaign_space import campaign_space
    from crashsearch.lab.console import set_verbose
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.lease import campaign_lock
    from crashsearch.lab.lock import ending_status
    from crashsearch.lab.store import Store
    from crashsearch.tasks.campaign.config import from_cli_args

    if getattr(args, "distributed", None):  # seam: fail in one line before a flow run starts
        from crashsearch.flows.distributed import check_deployment

        try:
            check_deployment(args.distributed)
        except UserError as exc:
            print(f"campaign: {exc}", file=sys.stderr)
            return 2
    try:
        policy_args = parse_policy_args(args.policy_args, args.policies)
        config = from_cli_args(args, home=args.home_dir.location, progress=True, policy_args=policy_args)
        dataset = preflight(config)
        campaign.features_to_use(args.home_dir, dataset.name, config.dataset, config.backbone_list, dataset)  # cached, ours, both classes
        # one writer per campaign: refused here in one line, before a flow run starts
        campaign_id = campaign.default_campaign_id(dataset.name) if config.campaign is None else config.campaign
        campaign_space(args.home_dir, campaign_id, config.space)  # another space than the campaign's: one line
        lock = campaign_lock(args.home_dir, campaign_id).acquire()
    except UserError as exc:  # ClassCheckError and CampaignBusy included: one line, before any round
        print(f"campaign: {exc}", file=sys.stderr)
        return 2
    set_verbose(getattr(args, "verbose", False))
    started = time.time()
    try:
        with quiet_prefect():
            result = campaign.get_campaign_flow()(**config.flow_params())
    except BaseException as exc:
        summary = _summary(args.home_dir, campaign_id, since=started)
        if ending_status(exc) == "interrupted" and summary is not None:
            print(summary, end="")  # what the interrupted run recorded
        raise
    finally:
        lock.release()
    home = args.home_dir
    summary = _summary(home, result["campaign"])
    print(summary if summary is not None else result)
    log = Store(home).backend.url(f"campaigns/{result['campaign']}/log")
    print(f"history: {log}  (query: crashsearch query \"SELECT * FROM experiments\" --home {home.location})")
    return 0


def _summary(home, campaign_id: str, since: float | None = None) -> str | None:
    """The campaign's summary.txt (through the store's backend), or None if absent or older than ``since``."""
    from crashsearch.lab.store import Store

    backend, key = Store(home).backend, f"campaigns/{campaign_id}/summary.txt"
    try:
        # an object store's times have whole seconds: a summary of this run may read as a little older
        if since is not None and backend.mtime(key) < since - 1:
            return None
        return backend.read(key).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


def preflight(config):
    """The user's mistakes a campaign would only meet inside its flow (a temporary server, a Prefect
    traceback), checked first: the dataset loads, the space loads, every policy name is registered.
    Returns the loaded dataset. Raises ValueError (DatasetError, SpaceError) in one line. A registered policy that cannot run
    here (an LLM agent without its key) is no error: the campaign skips it and says so."""
    from crashsearch.agents import list_policies
    from crashsearch.lab.datasets import load_dataset
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.space import Space

    dataset = load_dataset(config.dataset)
    Space.load(config.space)
    names = config.policy_list
    unknown = [n for n in names if n.strip().lower() not in list_policies()]
    if unknown or not names:
        raise UserError(f"no policy can run: unknown policy {', '.join(unknown) or '(none given)'}; "
                         f"valid policies: {', '.join(list_policies())}")
    return dataset


def parse_policy_args(items: list[str] | None, policies: str | None = None) -> dict[str, dict]:
    """``["claude.model=claude-sonnet-4-5", "tpe.n_startup_trials=5"]`` -> {"claude": {...}, "tpe": {...}}.

    A value is read as JSON when it parses (numbers, true/false, null, lists), else kept as a string.
    With ``policies`` (the comma list the campaign runs) each name must be one of them and each key
    one of that policy's options. Raises ValueError naming the bad item."""
    from crashsearch.agents import policy_options
    from crashsearch.agents.base import PolicyUnavailable
    from crashsearch.lab.errors import UserError

    running = {p.strip().lower() for p in policies.split(",") if p.strip()} if policies is not None else None
    out: dict[str, dict] = {}
    for item in items or []:
        target, sep, raw = item.partition("=")
        name, dot, key = target.partition(".")
        name, key = name.strip().lower(), key.strip()
        if not (sep and dot and name and key):
            raise UserError(f"--policy-arg {item!r}: expected NAME.KEY=VALUE, e.g. claude.temperature=0.7")
        if running is not None and name not in running:
            raise UserError(f"--policy-arg {item!r}: {name} is not among the policies ({', '.join(sorted(running))})")
        try:
            options = policy_options(name)
        except PolicyUnavailable:
            options = None  # its SDK is missing: the campaign reports that itself
        if options is not None and key not in options:
            raise UserError(f"--policy-arg {item!r}: {name} has no option {key!r}; its options: {', '.join(options) or 'none'}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(name, {})[key] = value
    return out
