"""The campaign flow: a thin adapter over the engine in tasks/campaign/.

``run_campaign`` is the library entry point (tests, control arms, benchmarks): keyword settings
as CampaignConfig's fields. ``campaign_flow_fn`` is the Prefect flow body: its parameters are
CampaignConfig's fields (``flow_parameters`` writes its signature from the config); inside the
flow the training batches, every proposal call and healing run as Prefect task runs. The CLI
command is flows/commands/campaign.py. See docs/engine.md.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from crashsearch.lab.console import echo
from crashsearch.lab.settings import Home, resolve_home
from crashsearch.tasks.campaign.config import CampaignConfig, flow_parameters
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


@flow_parameters("campaign")
def campaign_flow_fn(config: CampaignConfig) -> dict:
    """Prefect flow body: run or resume a campaign; while it runs, its progress, leaderboard and
    per-policy counts show as artifacts of the flow run (flows/progress.py).

    The parameters are CampaignConfig's fields (``flow_parameters``; tasks/campaign/config.py says
    what each one means). ``distributed`` ("flow/deployment", e.g. "train-batch/gpu") trains the
    batches as flow runs of that deployment on its work pool (flows/distributed.py). Returns
    {"campaign", "recorded", "new", "best_ap", "stopped"}."""
    from crashsearch.flows.progress import CampaignProgress

    train_task = _prefect_train_task()
    executor = None
    if config.distributed:  # seam: the executor (owned by flows/distributed.py)
        from crashsearch.flows.distributed import executor_for_campaign

        executor = executor_for_campaign(config.distributed, config.home, config.dataset, config.campaign, config.space,
                                         config.device, config.max_in_flight, config.dispatch_timeout_s)
    home = resolve_home(config.home)
    summary = Campaign(home, config, train_fn=lambda *a: train_task(*a), executor=executor, wrap=_prefect_wrap(),
                       reporter=CampaignProgress(home, log=echo)).run()
    return {"campaign": summary.campaign, "recorded": summary.recorded, "new": summary.new,
            "best_ap": summary.best_ap, "stopped": summary.stopped}


def get_campaign_flow():
    """The Prefect flow object (built lazily so importing this module stays light)."""
    from prefect import flow

    return flow(name="campaign", log_prints=True)(campaign_flow_fn)

