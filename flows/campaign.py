"""The campaign flow and ``crashsearch campaign``: a thin adapter over the engine in tasks/campaign/.

``run_campaign`` is the library entry point (tests, control arms, benchmarks): keyword settings
as CampaignConfig's fields. ``campaign_flow_fn`` is the Prefect flow body: its parameters are
CampaignConfig's (tests/test_config.py keeps them in step); inside the flow the training
batches, every proposal call and healing run as Prefect task runs. ``main`` is the CLI command.
See docs/engine.md.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

from crashsearch.lab.console import echo, set_verbose
from crashsearch.lab.datasets import load_dataset
from crashsearch.lab.errors import UserError
from crashsearch.lab.lock import CampaignLock, ending_status
from crashsearch.lab.settings import Home, resolve_home
from crashsearch.tasks.campaign.config import CampaignConfig, from_cli_args
from crashsearch.tasks.campaign.engine import Campaign, Wrap, default_campaign_id, features_to_use  # noqa: F401 (re-exported)
from crashsearch.tasks.campaign.executor import Executor, LocalExecutor  # noqa: F401 (re-exported)
from crashsearch.tasks.campaign.summary import CampaignSummary

# run_campaign's historical keyword names -> CampaignConfig's
_ALIASES = {"space_path": "space", "policy_kwargs": "policy_args", "campaign_id": "campaign"}


def run_campaign(home: str | os.PathLike | Home | None, dataset: str | os.PathLike, campaign_id: str | None = None, *,
                 config: CampaignConfig | None = None, train_fn: Callable | None = None,
                 log: Callable[[str], None] | None = None, executor: Executor | None = None,
                 wrap: Wrap | None = None, reporter: Any = None, **settings: Any) -> CampaignSummary:
    """Run or resume a campaign until its goal is recorded (``budget``, or ``extend`` more), ``hours`` pass
    or nothing new can be proposed. Returns a CampaignSummary.

    ``settings`` are CampaignConfig fields (``propose_mode`` defaults to "turns" here, the strict,
    reproducible mode: tests and control arms rely on it; the CLI and the flows default to "pipeline") (``policies`` and ``backbones`` may be lists; the
    older names ``space_path`` and ``policy_kwargs`` still work), applied over ``config``.
    ``train_fn(cells, features, seeds, fixed, device)`` trains a batch (default:
    tasks.train.train_batch); ``executor`` replaces the in-process one (e.g. the distributed one);
    ``reporter`` (flows/progress.py) hears of each batch, round and the end, for the Prefect UI.
    Raises ValueError for an impossible setting, a dataset without cached features, or when no
    policy can run.
    """
    values = {_ALIASES.get(k, k): v for k, v in settings.items()}
    for name in ("policies", "backbones"):
        if isinstance(values.get(name), (list, tuple)):
            values[name] = ",".join(values[name])
    values["dataset"] = str(dataset)
    if campaign_id is not None:
        values["campaign"] = campaign_id
    values.setdefault("policy_args", values.get("policy_args") or None)
    # the library entry point (tests, control arms, benchmarks) is the strict, reproducible mode unless told
    cfg = (config or CampaignConfig(dataset=str(dataset), propose_mode="turns")).replace(**values)
    h = home if isinstance(home, Home) else resolve_home(home)
    kw = {"wrap": wrap} if wrap is not None else {}
    return Campaign(h, cfg, train_fn=train_fn, log=log, executor=executor, reporter=reporter, **kw).run()


# ---- Prefect ------------------------------------------------------------------------------

def _prefect_train_task():
    from prefect import task

    from crashsearch.tasks.train import train_batch

    # GPU training carries the `gpu` tag: a Prefect concurrency limit on that tag caps batches per GPU.
    return task(train_batch, name="train-batch", tags=["gpu"], cache_policy=None, persist_result=False)


def _prefect_wrap() -> Wrap:
    """Each engine step as a Prefect task run (propose-<policy>, heal): visible in the UI beside the batches."""
    from prefect import task

    made: dict[str, Any] = {}

    def wrap(name: str, fn: Callable) -> Callable:
        if name not in made:
            made[name] = task(fn, name=name, cache_policy=None, persist_result=False)
        return made[name]

    return wrap


def campaign_flow_fn(dataset: str, campaign: str | None = None, home: str | None = None,
                     policies: str = "evolution,tpe,random", budget: int = 60, extend: int | None = None,
                     hours: float | None = None, space: str | None = None, backbones: str | None = None,
                     seeds: int = 3, round_size: int = 12, device: str = "auto", seed: int = 0,
                     rerun_leaders_after_fix: int = 0, progress: bool = False, propose_mode: str = "pipeline",
                     policy_args: dict | None = None, max_calls_in_flight: int = 8, lookahead: int | None = None,
                     trainers_per_device: int = 2, group_wait_s: float = 0.5, max_group: int = 64,
                     distributed: str | None = None, max_in_flight: int = 4,
                     dispatch_timeout_s: float = 1800.0, keep_models: str | int | None = 10) -> dict:
    """Prefect flow body: run or resume a campaign; while it runs, its progress, leaderboard and
    per-policy counts show as artifacts of the flow run (flows/progress.py).

    The parameters are CampaignConfig's (see tasks/campaign/config.py for each one's meaning).
    ``distributed`` ("flow/deployment", e.g. "train-batch/gpu") trains the batches as flow runs
    of that deployment on its work pool (flows/distributed.py). Returns {"campaign", "recorded",
    "new", "best_ap", "stopped"}."""
    from crashsearch.flows.progress import CampaignProgress

    config = CampaignConfig.from_params({k: v for k, v in locals().items() if k in _FLOW_PARAMS})
    train_task = _prefect_train_task()
    executor = None
    if distributed:  # seam: the executor (owned by flows/distributed.py)
        from crashsearch.flows.distributed import executor_for_campaign

        executor = executor_for_campaign(distributed, home, dataset, campaign, space, device, max_in_flight,
                                         dispatch_timeout_s)
    summary = Campaign(resolve_home(home), config, train_fn=lambda *a: train_task(*a), executor=executor,
                       wrap=_prefect_wrap(), reporter=CampaignProgress(resolve_home(home), log=echo)).run()
    return {"campaign": summary.campaign, "recorded": summary.recorded, "new": summary.new,
            "best_ap": summary.best_ap, "stopped": summary.stopped}


_FLOW_PARAMS = frozenset(f.name for f in CampaignConfig.fields("campaign"))


def parse_policy_args(items: list[str] | None, policies: str | None = None) -> dict[str, dict]:
    """``["claude.model=claude-sonnet-4-5", "tpe.n_startup_trials=5"]`` -> {"claude": {...}, "tpe": {...}}.

    A value is read as JSON when it parses (numbers, true/false, null, lists), else kept as a string.
    With ``policies`` (the comma list the campaign runs) each name must be one of them and each key
    one of that policy's options. Raises ValueError naming the bad item."""
    from crashsearch.agents import policy_options
    from crashsearch.agents.base import PolicyUnavailable

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


def get_campaign_flow():
    """The Prefect flow object (built lazily so importing this module stays light)."""
    from prefect import flow

    return flow(name="campaign", log_prints=True)(campaign_flow_fn)


def main(args) -> int:
    """`crashsearch campaign`: run the campaign flow and print the summary."""
    from crashsearch.flows.runtime import quiet_prefect

    if getattr(args, "distributed", None):  # seam: fail in one line before a flow run starts
        from crashsearch.flows.distributed import check_deployment

        try:
            check_deployment(args.distributed)
        except UserError as exc:
            print(f"campaign: {exc}", file=sys.stderr)
            return 2
    try:
        policy_args = parse_policy_args(args.policy_args, args.policies)
        config = from_cli_args(args, home=str(args.home_dir.root), progress=True, policy_args=policy_args)
        dataset = preflight(config)
        features_to_use(args.home_dir, dataset.name, config.dataset, config.backbone_list, dataset)  # cached, ours, both classes
        # one writer per campaign: refused here in one line, before a flow run starts
        campaign_id = default_campaign_id(dataset.name) if config.campaign is None else config.campaign
        from crashsearch.lab.campaign_space import campaign_space

        campaign_space(args.home_dir, campaign_id, config.space)  # another space than the campaign's: one line
        lock = CampaignLock(args.home_dir.root, campaign_id).acquire()
    except UserError as exc:  # ClassCheckError and CampaignBusy included: one line, before any round
        print(f"campaign: {exc}", file=sys.stderr)
        return 2
    set_verbose(getattr(args, "verbose", False))
    started = time.time()
    try:
        with quiet_prefect():
            result = get_campaign_flow()(**{f.name: getattr(config, f.name) for f in CampaignConfig.fields("campaign")})
    except BaseException as exc:
        summary_path = args.home_dir.root / "campaigns" / campaign_id / "summary.txt"
        if ending_status(exc) == "interrupted" and summary_path.exists() and summary_path.stat().st_mtime >= started:
            print(summary_path.read_text(), end="")  # what the interrupted run recorded
        raise
    finally:
        lock.release()
    home = args.home_dir
    summary_path = home.campaign(result["campaign"]) / "summary.txt"
    print(summary_path.read_text() if summary_path.exists() else result)
    print(f"history: {home.campaign(result['campaign']) / 'log'}  (query: crashsearch query \"SELECT * FROM experiments\" --home {home.root})")
    return 0


def preflight(config: CampaignConfig):
    """The user's mistakes a campaign would only meet inside its flow (a temporary server, a Prefect
    traceback), checked first: the dataset loads, the space loads, every policy name is registered.
    Returns the loaded dataset. Raises ValueError (DatasetError, SpaceError) in one line. A registered policy that cannot run
    here (an LLM agent without its key) is no error: the campaign skips it and says so."""
    from crashsearch.agents import list_policies
    from crashsearch.lab.space import Space

    dataset = load_dataset(config.dataset)
    Space.load(config.space)
    names = config.policy_list
    unknown = [n for n in names if n.strip().lower() not in list_policies()]
    if unknown or not names:
        raise UserError(f"no policy can run: unknown policy {', '.join(unknown) or '(none given)'}; "
                         f"valid policies: {', '.join(list_policies())}")
    return dataset


