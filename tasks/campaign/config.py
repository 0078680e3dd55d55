"""``CampaignConfig``: every campaign setting, its default and its help text, written once.

The CLI flags of ``crashsearch campaign`` are built from it (``add_cli_arguments``), and so are
the campaign and nightly flows' parameters (``flow_parameters``); tests/test_config.py checks
prefect.yaml's deployment parameters against it (a YAML key the config does not know fails).

A field's metadata says where it appears:
- ``flag``: the CLI flag (default ``--name-with-dashes``); ``None``: no flag (set by other means).
- ``scope``: "campaign" (the campaign flow, run_campaign and the nightly flow) or "nightly"
  (the nightly flow only).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from crashsearch.lab.errors import UserError
from crashsearch.lab.bounds import INT64_MAX

PROPOSE_MODES = ("pipeline", "turns", "concurrent")
INT_FIELDS = ("budget", "extend", "seeds", "round_size", "seed", "rerun_leaders_after_fix", "max_calls_in_flight",
              "lookahead", "trainers_per_device", "max_group", "max_in_flight", "control_budget")
CLI_ONLY = ("--verbose",)  # terminal options of `crashsearch campaign`, not campaign settings


def _f(default: Any, help: str, *, flag: str | None | bool = True, scope: str = "campaign", **cli: Any) -> Any:
    """A config field: default, help and where it appears (see the module docstring)."""
    return field(default=default, metadata={"help": help, "flag": flag, "scope": scope, "cli": cli})


@dataclass(frozen=True)
class CampaignConfig:
    """What one run of a campaign does. Defaults are the CLI's and the flows'."""

    dataset: str = _f(None, "dataset folder (Nexar train.csv or generic CSV)", required=True)
    campaign: str | None = _f(None, "campaign id (default: derived from the dataset); re-use to resume")
    home: str | None = _f(None, "state directory (the CLI's --home)", flag=None)
    policies: str = _f("evolution,tpe,random", "comma list of proposal policies; a run's new cells are split evenly "
                                               "across them, remainder by order (8 for three: 3, 3, 2), from the first "
                                               "call on; what one leaves unfilled goes to the others, and the summary "
                                               "says why")
    budget: int = _f(60, "the campaign's total experiments (new cells and replicates); with --extend, its ceiling")
    extend: int | None = _f(None, "per-run allowance: this run records up to N more experiments than the campaign "
                                  "holds (a nightly run grows the campaign by N); --budget stays the ceiling",
                            metavar="N")
    hours: float | None = _f(None, "wall-clock limit of this run, in hours")
    space: str | None = _f(None, "space YAML (default: the campaign's own, kept in its folder, else the 108,000-cell "
                                 "collision space); a resume in another space is refused")
    backbones: str | None = _f(None, "comma list; default: every backbone with cached features")
    seeds: int = _f(3, "runs of each of the top 3 cells: new cells leave min(3 x (N-1), half the run) experiments "
                       "to the leaders' replicates, spent once every new cell is recorded")
    round_size: int = _f(12, "turns mode: experiments per round; pipeline: a policy's share of the first calls")
    device: str = _f("auto", "training device: auto, cpu, cuda, cuda:1")
    seed: int = _f(0, "campaign seed (policies and training seeds derive from it)")
    rerun_leaders_after_fix: int = _f(0, "first re-run the top K cells trained before the latest bug-fix event",
                                      metavar="K")
    progress: bool = _f(False, "show a progress bar (the CLI always does)", flag=None)
    propose_mode: str = _f("pipeline", "pipeline: proposers and trainers run at once (LLM calls overlap training); "
                                    "turns: strict rounds, policies one after another (reproducible); "
                                    "concurrent: strict rounds, all policies asked at once",
                           choices=list(PROPOSE_MODES))
    policy_args: dict | None = _f(None, "a keyword argument for one policy, repeatable: claude.model=..., "
                                        "gemini.temperature=0.7, claude.role=explorer, tpe.n_startup_trials=5",
                                  flag="--policy-arg", action="append", metavar="NAME.KEY=VALUE")
    max_calls_in_flight: int = _f(8, "pipeline: the most proposal calls one policy keeps running at once (2, "
                                     "more while its replies carry fewer cells than asked)")
    lookahead: int | None = _f(None, "pipeline: cells claimed beyond what the trainers can start (bounds how far "
                                     "an agent runs ahead of the evidence); default: sized from the measured "
                                     "trainer rate and call latency to keep the trainers busy (at least 24)",
                               metavar="N")
    trainers_per_device: int = _f(2, "pipeline: training groups running at once on the device")
    group_wait_s: float = _f(0.5, "pipeline: longest wait for a training group to fill", metavar="SECONDS")
    max_group: int = _f(64, "models trained together as one vectorised group")
    distributed: str | None = _f(None, "train batches as flow runs of this deployment, e.g. train-batch/gpu "
                                       "(needs PREFECT_API_URL)", metavar="DEPLOYMENT")
    max_in_flight: int = _f(4, "distributed: batches dispatched at once")
    dispatch_timeout_s: float = _f(1800.0, "distributed: re-dispatch a batch not recorded this long after a "
                                           "worker took it", flag="--dispatch-timeout", metavar="SECONDS")
    keep_models: str | int | None = _f(10, "keep the head weights of the top K cells by mean validation AP (a number, "
                                           "'all' or 0), garbage-collected as the leaders change (tasks/keep.py)",
                                       metavar="K")
    control_budget: int = _f(0, "nightly: control arms (each policy alone) with this budget; 0: none",
                             scope="nightly", flag=None)
    control_policies: str = _f("random,tpe", "nightly: the control arms' policies", scope="nightly", flag=None)

    def __post_init__(self) -> None:
        from crashsearch.tasks.keep import parse_keep  # light: no torch at import

        try:  # "all" (None) or a whole number >= 0, as the flag and a flow parameter may give it
            object.__setattr__(self, "keep_models", parse_keep(self.keep_models))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        problems = self.problems()
        if problems:
            raise UserError("; ".join(problems))

    def problems(self) -> list[str]:
        """One line per impossible setting (empty when the config can run)."""
        out = []
        if not self.dataset:
            out.append("a dataset is required")
        for name in ("budget", "seeds", "round_size", "max_calls_in_flight", "trainers_per_device", "max_group",
                     "max_in_flight"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("seed", "rerun_leaders_after_fix", "lookahead", "control_budget"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                out.append(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.extend is not None and self.extend < 1:
            out.append(f"extend must be at least 1, got {self.extend}")
        if self.hours is not None and not 0 < self.hours < math.inf:
            out.append(f"hours must be positive and finite, got {self.hours}")
        # campaign.json and the views hold these as 64-bit integers: a larger one would break every reader
        out += [f"{name} {value} is too large: at most {INT64_MAX}" for name in INT_FIELDS
                if isinstance(value := getattr(self, name), int) and value > INT64_MAX]
        if self.group_wait_s < 0 or not self.dispatch_timeout_s > 0:
            out.append("group_wait_s must be >= 0 and dispatch_timeout_s > 0")
        if self.propose_mode not in PROPOSE_MODES:
            out.append(f"propose_mode must be one of {', '.join(PROPOSE_MODES)}, not {self.propose_mode!r}")
        return out

    # ---- derived values ----------------------------------------------------------------------
    @property
    def policy_list(self) -> list[str]:
        return [p.strip() for p in self.policies.split(",") if p.strip()]

    @property
    def backbone_list(self) -> list[str] | None:
        return [b.strip() for b in self.backbones.split(",") if b.strip()] if self.backbones else None

    def target(self, recorded: int) -> int:
        """Experiments the campaign should hold when this run ends, given ``recorded`` at its start."""
        return min(self.budget, recorded + self.extend) if self.extend is not None else self.budget

    def replace(self, **changes: Any) -> "CampaignConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def fields(cls, scope: str | None = None) -> list[dataclasses.Field]:
        """The fields, optionally of one scope ("campaign" or "nightly")."""
        return [f for f in dataclasses.fields(cls) if scope is None or f.metadata["scope"] == scope]

    @classmethod
    def flow_fields(cls, flow: str = "campaign") -> list[dataclasses.Field]:
        """The fields a flow takes as parameters: "campaign" (the campaign flow) or "nightly" (the
        campaign's fields, then the nightly flow's own)."""
        return cls.fields("campaign") + (cls.fields("nightly") if flow == "nightly" else [])

    def flow_params(self, flow: str = "campaign") -> dict[str, Any]:
        """This config as keyword parameters of the campaign (or nightly) flow."""
        return {f.name: getattr(self, f.name) for f in self.flow_fields(flow)}

    @classmethod
    def defaults(cls, scope: str | None = None) -> dict[str, Any]:
        return {f.name: f.default for f in cls.fields(scope)}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "CampaignConfig":
        """The config of a flow's parameters (names as the fields). Raises ValueError on an unknown name."""
        known = {f.name for f in cls.fields()}
        unknown = sorted(set(params) - known)
        if unknown:
            raise UserError(f"unknown campaign setting(s): {', '.join(unknown)}")
        return cls(**params)


def flow_parameters(flow: str = "campaign") -> Callable[[Callable[[CampaignConfig], Any]], Callable[..., Any]]:
    """Decorate ``body(config)`` into a flow function whose parameters are the config's fields
    (``CampaignConfig.flow_fields(flow)``), each with its type and default, ``dataset`` required;
    called, it builds the config (UserError for an impossible setting) and runs ``body`` with it.

    Why flat parameters and not one ``config`` parameter: Prefect 3 builds a deployment's parameter
    schema, and validates a run's parameters, from the flow function's signature
    (``inspect.signature``, which reads ``__signature__``). A pydantic model or dataclass parameter
    would nest every setting under one key: prefect.yaml's deployment parameters, the UI's form and
    ``prefect deployment run -p budget=N`` would change shape, and a run's parameters, merged with
    the deployment's key by key, would replace the whole config instead of one setting.
    """
    def decorate(body: Callable[[CampaignConfig], Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(CampaignConfig)
        params = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[f.name],
                                    default=inspect.Parameter.empty if f.metadata["cli"].get("required") else f.default)
                  for f in CampaignConfig.flow_fields(flow)]
        signature = inspect.Signature(params)

        @functools.wraps(body)
        def flow_fn(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return body(CampaignConfig.from_params(dict(bound.arguments)))

        flow_fn.__signature__ = signature  # type: ignore[attr-defined]
        flow_fn.__annotations__ = {p.name: p.annotation for p in params}
        return flow_fn

    return decorate


def flag_of(f: dataclasses.Field) -> str | None:
    """The CLI flag of a field, or None."""
    flag = f.metadata["flag"]
    if flag is None:
        return None
    return flag if isinstance(flag, str) else "--" + f.name.replace("_", "-")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per campaign field that has one, with the field's default and help."""
    for f in CampaignConfig.fields("campaign"):
        flag = flag_of(f)
        if flag is None:
            continue
        extra = dict(f.metadata["cli"])
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"]}
        if extra.get("action") == "append":
            kwargs["default"] = []
        elif extra.get("required"):
            pass
        else:
            kwargs["default"] = f.default
            kind = _scalar_type(f.type)
            if kind is not str:
                kwargs["type"] = kind
        parser.add_argument(flag, **kwargs, **extra)


def _scalar_type(annotation: Any) -> type:
    text = str(annotation)
    for name, kind in (("int", int), ("float", float), ("bool", bool)):
        if text.split(" ")[0] == name:
            return kind
    return str


def from_cli_args(args: argparse.Namespace, **overrides: Any) -> CampaignConfig:
    """The config of parsed ``crashsearch campaign`` arguments (policy_args must be parsed by the caller)."""
    values = {f.name: getattr(args, f.name) for f in CampaignConfig.fields("campaign") if hasattr(args, f.name)}
    values.update(overrides)
    return CampaignConfig(**values)
