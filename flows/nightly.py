"""The ``nightly`` flow: run (or resume) a campaign, optionally its control arms, then the analysis report.

prefect.yaml schedules it with a cron (see docs/deploying.md); in the morning the campaign's
leaderboard (a table artifact) and the report (a markdown artifact, plus the files under
``<home>/campaigns/<id>/report/``) sit beside the run in the Prefect UI.

The campaign and analyze steps run as subflows (their own runs and artifacts). Control arms
(random and TPE alone with the same budget, ``flows.analyze.run_control_arms``) train in this
process; give them a budget only when the analysis should compare against them.

This module also holds ``campaign_flow``, the campaign flow object that prefect.yaml's
``campaign`` deployment points at (a deployment entrypoint must name a flow object, and
flows/campaign.py builds its flow lazily to stay light to import).
"""
from __future__ import annotations

from prefect import flow

from crashsearch.flows.analyze import analyze_flow, run_control_arms
from crashsearch.flows.campaign import get_campaign_flow

campaign_flow = get_campaign_flow()


@flow(name="nightly", log_prints=True)
def nightly_flow(dataset: str, campaign: str | None = None, home: str | None = None,
                 policies: str = "evolution,tpe,random", budget: int = 60, hours: float | None = None,
                 space: str | None = None, backbones: str | None = None, seeds: int = 3, round_size: int = 12,
                 device: str = "auto", seed: int = 0, distributed: str | None = None, max_in_flight: int = 4,
                 dispatch_timeout_s: float = 1800.0, control_budget: int = 0,
                 control_policies: str = "random,tpe", propose_mode: str = "turns",
                 policy_args: dict[str, dict] | None = None) -> dict:
    """Campaign, then control arms if ``control_budget`` > 0, then analyze.

    ``budget`` is the campaign's total: a nightly run of a campaign id that already holds its
    budget records nothing new, so raise it (or use a dated campaign id) to search further.
    Returns {"campaign": the campaign flow's result, "controls": control campaign ids,
    "analysis": the analyze flow's result}.
    """
    result = campaign_flow(dataset=dataset, campaign=campaign, home=home, policies=policies, budget=budget,
                           hours=hours, space=space, backbones=backbones, seeds=seeds, round_size=round_size,
                           device=device, seed=seed, distributed=distributed, max_in_flight=max_in_flight,
                           dispatch_timeout_s=dispatch_timeout_s, propose_mode=propose_mode,
                           policy_args=policy_args)
    campaign_id = result["campaign"]
    controls: list[str] = []
    if control_budget > 0:
        controls = run_control_arms(home, dataset, campaign_id, control_budget,
                                    policies=tuple(p.strip() for p in control_policies.split(",") if p.strip()),
                                    space_path=space, device=device)
        print(f"control arms: {', '.join(controls) or 'none could run'}")
    analysis = analyze_flow(campaign=campaign_id, home=home)
    print(f"nightly {campaign_id}: {result['recorded']} experiments, best val AP {result['best_ap']}; "
          f"report {analysis['report']}")
    return {"campaign": result, "controls": controls, "analysis": analysis}
