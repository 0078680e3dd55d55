"""A campaign run's set-up: the dataset, its cached features, the campaign's space, the lock, the
executor and the policies. ``set_up`` does it in the order that keeps a refused run harmless:
the features are checked before the lock is taken (a refused campaign leaves no folder behind),
the lock before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from crashsearch.agents import create_policy
from crashsearch.agents.base import Policy, PolicyUnavailable
from crashsearch.lab.campaign_space import campaign_space, keep_space
from crashsearch.lab.classes import check_cached
from crashsearch.lab.datasets import load_dataset
from crashsearch.lab.errors import UserError
from crashsearch.lab.lease import ObjectLease, campaign_lock
from crashsearch.lab.lock import CampaignLock
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.lab.versions import code_version
from crashsearch.tasks.campaign.config import CampaignConfig
from crashsearch.tasks.campaign.executor import Executor, LocalExecutor
from crashsearch.tasks.campaign.stopping import Stopping
from crashsearch.tasks.execute import BatchContext
from crashsearch.tasks.record import one_line


def features_to_use(home: Home, dataset_name: str, dataset_arg: str, backbones: list[str] | None,
                    dataset: Any = None) -> list[str]:
    """The backbones a campaign trains on (``backbones``, or every complete cache of the dataset),
    after checking each is cached and every split has both classes (lab.classes); with ``dataset``
    (a loaded Dataset) also that each cache was extracted from it and holds all its videos. Raises
    UserError / ClassCheckError / FeaturesNotFound in one line; the CLI calls it before a flow
    starts (and before the campaign's lock), the engine again when it starts."""
    from crashsearch.lab.cache import latest_partition, list_cached

    available = sorted({c["backbone"] for c in list_cached(home, dataset_name) if c.get("complete", True)})
    wanted = list(backbones or available)
    extract = f"run `crashsearch extract --dataset {dataset_arg} --backbone NAME` first"
    if not available:
        raise UserError(f"no cached features for dataset {dataset_name!r}; {extract}")
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise UserError(f"no cached features for dataset {dataset_name!r} and backbone(s) {', '.join(missing)}; "
                         f"{extract} (cached: {', '.join(available)})")
    if dataset is not None:  # another dataset's features under the same name, or videos missing: refused here
        for backbone in wanted:
            latest_partition(home, dataset_name, backbone, dataset)
    check_cached(home, dataset_name, wanted)  # every split has both classes, or no round starts
    return wanted


def default_campaign_id(dataset_name: str) -> str:
    return f"{dataset_name}"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def create_policies(config: CampaignConfig, space: Space, log: Callable[[str], None]) -> tuple[list[Policy], list[str]]:
    """The run's policies (seeded ``seed + i`` in ``--policies`` order) and, one line each, those that
    cannot run here (no key or SDK, a bad option): the rest go on. Raises UserError when none can run."""
    policies, unavailable = [], []
    policy_args = config.policy_args or {}
    for i, name in enumerate(config.policy_list):
        try:
            policies.append(create_policy(name, space, seed=config.seed + i, **policy_args.get(name, {})))
        except (PolicyUnavailable, ValueError) as exc:
            unavailable.append(one_line(str(exc)))
            log(f"policy {name} unavailable: {one_line(str(exc))}")
    if not policies:
        raise UserError(f"no policy can run: {'; '.join(unavailable) or 'none given'}")
    return policies, unavailable


@dataclass
class Setup:
    """What ``set_up`` made ready: everything a run needs before its ledger is read."""

    dataset: Any  # lab.datasets.Dataset
    campaign: str
    lock: CampaignLock | ObjectLease  # by where the home lives (lab/lease.campaign_lock)
    store: Store
    device: str
    stopping: Stopping  # its clock starts when the lock is held
    space: Space  # the campaign's space restricted to the cached backbones
    space_path: str | None  # control arms reuse it
    space_record: dict  # the space's digest and kept copy, for campaign.json
    backbones: list[str]
    features: dict  # backbone -> loaded features (empty when another executor trains)
    weights: dict[str, str]  # backbone -> weights id ("random" offline)
    executor: Executor
    policies: list[Policy]
    unavailable: list[str]


def set_up(home: Home, config: CampaignConfig, log: Callable[[str], None], executor: Executor | None = None,
           train_fn: Callable | None = None) -> Setup:
    """Load, check and lock (module docstring). Raises UserError (no cached features, no policy can
    run, a space other than the campaign's) or CampaignBusy, in one line."""
    from crashsearch.lab.cache import latest_partition, load_features, weights_id

    dataset = load_dataset(config.dataset)
    campaign = default_campaign_id(dataset.name) if config.campaign is None else config.campaign
    # checked before the lock: a refused campaign leaves no folder behind
    wanted = features_to_use(home, dataset.name, config.dataset, config.backbone_list, dataset)
    lock = campaign_lock(home, campaign).acquire()  # one writer per campaign (lab/lock.py, lab/lease.py)
    store = Store(home)
    device = resolve_device(config.device)
    stopping = Stopping(config.hours, config.budget)

    wanted = features_to_use(home, dataset.name, config.dataset, config.backbone_list)
    # the campaign's own space (lab/campaign_space.py): --space, else its kept copy; another one is refused
    full, path = campaign_space(home, campaign, config.space, log=log)
    space_path = str(path.resolve()) if path else None
    space_record = keep_space(home, campaign, full, path)
    space = full.restrict(backbone=wanted)
    if executor is None:
        # dataset=: only a cache extracted from this dataset's files counts, not one with its folder name
        features = {b: load_features(home, dataset.name, b, device=device, dataset=dataset) for b in wanted}
        weights = {b: f.weights for b, f in features.items()}
    else:  # the workers load the features; this process only needs their weights ids
        features = {}
        weights = {b: weights_id(latest_partition(home, dataset.name, b, dataset).meta) for b in wanted}
    ctx = BatchContext(campaign, dataset.name, space, code_version(), device, keep_models=config.keep_models)
    executor = executor or LocalExecutor(features, ctx, store, train_fn)
    policies, unavailable = create_policies(config, space, log)
    return Setup(dataset, campaign, lock, store, device, stopping, space, space_path, space_record, sorted(wanted),
                 features, weights, executor, policies, unavailable)
