"""`crashsearch analyze`: the report of a campaign, as a Prefect flow.

The flow loads the campaign's history from the store together with what the report compares
it with: its control-arm campaigns (ids ``<campaign>-baseline-<policy>[-s<k>]``), other datasets'
campaigns (for the transfer section) and the bug-fix events; ``analysis.report.build_report``
does the rest and writes ``<home>/campaigns/<id>/report/``. The flow publishes the report as a
Prefect markdown artifact.

``run_control_arms`` trains the control arms for real (random and TPE with the same budget on
the same cached features and space), tagged by their campaign ids so the analysis finds them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from prefect import flow

from crashsearch.analysis.history import baseline_campaign_id, parse_baseline
from crashsearch.analysis.report import build_report, headline_lines
from crashsearch.lab.errors import UserError
from crashsearch.lab.lock import reraise_interrupt
from crashsearch.lab.settings import Home, resolve_home
from crashsearch.lab.space import Space, SpaceError
from crashsearch.lab.store import Store
from crashsearch.lab.versions import bugfix_events

REPORT_DIR = "report"


def load_inputs(home: Home, campaign: str) -> dict:
    """The campaign's rows and what the report compares them with.

    Returns {"history", "baselines" (rows of its control-arm campaigns or None), "others" (rows of
    campaigns on other datasets or None), "events", "weights" (from campaign.json), "info"}.
    Raises ValueError naming the campaign (and the known ones) when it has no experiments.
    """
    store = Store(home)
    infos = {c["id"]: c for c in store.campaigns()}
    history = store.experiments(campaign)
    if history.empty:
        raise store.missing_campaign(campaign, listed=lambda c: not parse_baseline(c))
    require_finished(history, campaign)
    # control arms trained on another dataset or space (before it changed) are kept on disk, not compared
    baseline_ids = [cid for cid in infos if (parsed := parse_baseline(cid)) and parsed[0] == campaign
                    and same_setup(infos[cid], infos.get(campaign, {}))]
    baselines = [store.experiments(cid) for cid in sorted(baseline_ids)]
    datasets = set(history["dataset"].dropna().astype(str))
    other_ids = [cid for cid, info in infos.items()
                 if cid != campaign and not parse_baseline(cid) and info.get("dataset") and info["dataset"] not in datasets]
    others = [store.experiments(cid) for cid in sorted(other_ids)]
    return {
        "history": history,
        "baselines": _concat(baselines),
        "others": _concat(others),
        "events": bugfix_events(home, campaign),  # global events and this campaign's own
        "weights": infos.get(campaign, {}).get("weights"),
        "info": infos.get(campaign, {}),
    }


def require_finished(history: pd.DataFrame, campaign: str) -> None:
    """Raise ValueError when no row of ``history`` finished with a validation AP (nothing to analyze)."""
    ok = (history["status"] == "ok") & pd.to_numeric(history["val_ap"], errors="coerce").notna()
    if not ok.any():
        failed = int((history["status"] == "failed").sum())
        raise UserError(f"campaign {campaign!r} has no finished experiment with a validation AP yet "
                         f"({len(history)} recorded, {failed} failed); nothing to analyze")


SETUP_KEYS = ("dataset", "space", "space_path", "backbones")


def same_setup(arm: dict, parent: dict) -> bool:
    """True when a control arm's campaign.json has the parent's dataset, space and backbones (where both say).
    The space is compared by its digest where both recorded one (lab/campaign_space.py; an arm reads the
    parent's kept copy, another path), else by its file's path (campaigns of older versions)."""
    def norm(key, value):
        return sorted(value) if key == "backbones" and isinstance(value, list) else value

    keys = SETUP_KEYS
    if arm.get("space_digest") and parent.get("space_digest"):
        keys = tuple(k for k in SETUP_KEYS if k != "space_path") + ("space_digest",)
    return all(norm(k, arm[k]) == norm(k, parent[k]) for k in keys
               if arm.get(k) is not None and parent.get(k) is not None)


def validation_counts(dataset_path) -> dict | None:
    """{videos, positives, negatives} of the dataset's validation split (the split campaigns train
    with), or None when the dataset is not given or cannot be read (the report then says so)."""
    if not dataset_path:
        return None
    from crashsearch.lab.datasets import load_dataset

    try:
        val = load_dataset(dataset_path).by_split("val")
    except (OSError, ValueError):
        return None
    pos = sum(1 for v in val if v.label == 1)
    return {"videos": len(val), "positives": pos, "negatives": len(val) - pos}


def campaign_space(info: dict) -> Space | None:
    """The space the campaign ran in (campaign.json ``space_path``), or None for the default space.

    A space file that is gone or broken gives None too: the shares over the space then check the
    runs' recorded space name against the default's and say why when they differ.
    """
    try:
        return Space.load(info["space_path"]) if info.get("space_path") else None
    except SpaceError as exc:
        print(f"analyze: the campaign's space: {str(exc).splitlines()[0]}; using the default space", file=sys.stderr)
        return None


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def analyze(campaign: str, home: str | Path | Home | None = None) -> dict:
    """Build the report of one campaign (no Prefect needed).

    Returns {"campaign", "report_dir", "report", "html", "numbers_path", "headline", "numbers"}.
    Raises ValueError when the campaign has no experiments.
    """
    h = home if isinstance(home, Home) else resolve_home(home)
    inputs = load_inputs(h, campaign)
    out_dir = h.campaign(campaign) / REPORT_DIR
    numbers = build_report(inputs["history"], out_dir, events=inputs["events"], title=f"Campaign {campaign}",
                           baselines_df=inputs["baselines"], other_datasets=inputs["others"], weights=inputs["weights"],
                           forecast_more=inputs["info"].get("extend"),  # a nightly campaign: the next night's gain
                           validation=validation_counts(inputs["info"].get("dataset_path")),
                           space=campaign_space(inputs["info"]))
    return {"campaign": campaign, "report_dir": str(out_dir), "report": str(out_dir / "report.md"),
            "html": str(out_dir / "report.html"), "numbers_path": str(out_dir / "numbers.json"),
            # a section not computed is null in numbers.json (not_computed says why): the summary stands without it
            "headline": numbers["headline"] or {},
            "arm_fits": ((numbers["baselines"] or {}).get("from_scratch") or {}).get("power_laws"),
            "numbers": numbers}


@flow(name="analyze", log_prints=True)
def analyze_flow(campaign: str, home: str | None = None) -> dict:
    """Prefect flow: build the report of ``campaign`` and publish it as a markdown artifact.

    Returns what ``analyze`` returns minus the full numbers (they are in numbers.json).
    """
    result = analyze(campaign, home)
    _publish(campaign, Path(result["report"]))
    return {k: v for k, v in result.items() if k != "numbers"}


def _publish(campaign: str, report_md: Path) -> None:
    """The report as a Prefect markdown artifact, with links to its files (figures as links: the UI
    cannot show local images); never fails the flow."""
    try:
        from prefect.artifacts import create_markdown_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:  # called as a plain function (e.g. analyze_flow.fn): no run to attach to
            return
        lines = [_figure_link(report_md.parent, line) if line.startswith("![") else line
                 for line in report_md.read_text().splitlines()]
        lines += ["", "## Report files", ""] + [f"- [{f.relative_to(report_md.parent)}]({f.resolve().as_uri()})"
                                                   for f in _report_files(report_md.parent)]
        key = "".join(c if c.isalnum() else "-" for c in campaign.lower()).strip("-") or "campaign"
        create_markdown_artifact(key=f"{key}-report", markdown="\n".join(lines),
                                 description=f"Analysis report of campaign {campaign}")
    except Exception as exc:  # an artifact is a convenience: the report files are written already
        reraise_interrupt(exc)
        print(f"could not publish the report artifact: {str(exc).splitlines()[0][:160]}", file=sys.stderr)


def _figure_link(folder: Path, line: str) -> str:
    """A report figure (``![alt](file.png)``) as a link to the file: the UI cannot show local images."""
    alt, _, target = line[2:].partition("](")
    path = (folder / target.rstrip(")")).resolve()
    return f"*figure: [{alt or path.name}]({path.as_uri()})*"


def _report_files(folder: Path) -> list[Path]:
    """The report's files: report.md, report.html and numbers.json first, then the rest by name."""
    first = [folder / n for n in ("report.md", "report.html", "numbers.json") if (folder / n).exists()]
    return first + sorted(f for f in folder.rglob("*") if f.is_file() and f not in first and not f.name.startswith("."))


def run_control_arms(home: str | Path | Home | None, dataset: str | Path, campaign_id: str, budget: int,
                     policies: tuple[str, ...] = ("random", "tpe"), seeds: int = 1, replicates: int | None = None,
                     **campaign_kwargs) -> list[str]:
    """Train from-scratch arms for ``campaign_id``: each policy alone, ``seeds`` independent repeats
    (``analyze --repeats``, default 3 there; 1 here, as the nightly deployment calls it).

    Every arm has the campaign's budget and space (``space_path`` and ``backbones`` default to the
    parent's campaign.json), so arms compare search strategies like for like. An arm already
    complete is resumed and adds nothing: a later call (the next night) reuses it, until the
    dataset, space or backbones change (``same_setup``): then fresh arms run under the next free
    ``-s<k>`` ids and the stale ones, kept on disk, leave the comparison.

    Campaign ids are ``<campaign_id>-baseline-<policy>`` (``-s<k>`` for run k >= 1), so
    ``analyze`` compares them with the campaign. ``replicates`` (seeds per leader) and
    ``backbones`` default to the parent campaign's settings in its campaign.json; other keyword
    arguments go to ``flows.campaign.run_campaign``. Returns the control campaign ids. A policy
    that cannot run is reported on stderr and skipped.
    """
    from crashsearch.flows.campaign import run_campaign

    h = home if isinstance(home, Home) else resolve_home(home)
    parent = next((c for c in Store(h).campaigns() if c["id"] == campaign_id), {})
    campaign_kwargs.setdefault("backbones", parent.get("backbones"))
    if not campaign_kwargs.get("space_path"):  # the parent's own space: its kept copy, else the file it names
        from crashsearch.lab.campaign_space import kept_space

        own = kept_space(h, campaign_id) or parent.get("space_path")
        campaign_kwargs["space_path"] = str(own) if own else None
    replicates = replicates if replicates is not None else int(parent.get("seeds") or 3)
    infos = {c["id"]: c for c in Store(h).campaigns()}
    done = []
    for policy in policies:
        rep, reps = 0, 0
        while reps < seeds:
            cid = baseline_campaign_id(campaign_id, policy, rep)
            rep += 1
            if cid in infos and not same_setup(infos[cid], parent):
                continue  # trained before the dataset or space changed: kept, not reused; the next index runs afresh
            reps += 1
            try:
                run_campaign(h, dataset, campaign_id=cid, policies=(policy,), budget=budget, seeds=replicates,
                             seed=rep - 1, **campaign_kwargs)
            except ValueError as exc:
                print(f"control arm {cid}: {str(exc).splitlines()[0]}", file=sys.stderr)
                continue
            done.append(cid)
    return done


def headline_text(result: dict) -> str:
    """The lines the CLI prints: headline numbers and where the report is."""
    h = result["headline"]

    def f(v, fmt=".4f"):
        return "n/a" if v is None else format(v, fmt)

    lines = [
        f"campaign {result['campaign']}",
        # the report's own headline sentences: scope, N and interval of each figure (no Markdown bold)
        *[line.replace("**", "") for line in headline_lines(h)],
        f"power law c         {f(h.get('c'), '.3f')}  (R^2 = {f(h.get('r2'), '.2f')})",
        f"baselines           {h.get('verdict') or 'n/a'}",
        *[f"  arm {r['arm']:<12} c = {f(r.get('c'), '.3f')}"
          + (f" [{f(r['c_lo'], '.3f')}, {f(r['c_hi'], '.3f')}]" if r.get("c_lo") is not None else "")
          + f"  (a = {f(r.get('a'))}, b = {f(r.get('b'))}, R^2 = {f(r.get('r2'), '.2f')}; "
          f"{r.get('repeats')} repeats of {r.get('n')})"
          + (f"  at a bound: {r['at_bound']}" if r.get("at_bound") else "")
          + (f"  {r['reason']}" if r.get("reason") else "")
          for r in result.get("arm_fits") or []],
        f"report              {result['report']}",
        f"                    {result['html']}",
    ]
    return "\n".join(lines)

