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
from crashsearch.tasks.campaign.config import CampaignConfig

campaign_flow = get_campaign_flow()
_CAMPAIGN_PARAMS = frozenset(f.name for f in CampaignConfig.fields("campaign"))


@flow(name="nightly", log_prints=True)
def nightly_flow(dataset: str, campaign: str | None = None, home: str | None = None,
                 policies: str = "evolution,tpe,random", budget: int = 60, extend: int | None = None,
                 hours: float | None = None, space: str | None = None, backbones: str | None = None,
                 seeds: int = 3, round_size: int = 12, device: str = "auto", seed: int = 0,
                 rerun_leaders_after_fix: int = 0, progress: bool = False, propose_mode: str = "pipeline",
                 policy_args: dict | None = None, max_calls_in_flight: int = 8, lookahead: int | None = None,
                 trainers_per_device: int = 2, group_wait_s: float = 0.5, max_group: int = 64,
                 distributed: str | None = None, max_in_flight: int = 4, dispatch_timeout_s: float = 1800.0,
                 keep_models: str | int | None = 10,
                 control_budget: int = 0, control_policies: str = "random,tpe") -> dict:
    """Campaign, then control arms if ``control_budget`` > 0, then analyze.

    The parameters are CampaignConfig's (tasks/campaign/config.py; tests/test_config.py keeps
    them in step). ``budget`` is the campaign's total; ``extend`` N makes each night one run
    that adds N experiments (the deployment in prefect.yaml does), so the campaign grows every
    night until ``budget``. Returns {"campaign": the campaign flow's result, "controls": control
    campaign ids, "analysis": the analyze flow's result}.
    """
    params = {k: v for k, v in locals().items() if k in _CAMPAIGN_PARAMS}
    CampaignConfig.from_params({**params, "control_budget": control_budget, "control_policies": control_policies})
    result = campaign_flow(**params)
    campaign_id = result["campaign"]
    controls: list[str] = []
    if control_budget > 0:
        controls = run_control_arms(home, dataset, campaign_id, control_budget,
                                    policies=tuple(p.strip() for p in control_policies.split(",") if p.strip()),
                                    space_path=space, device=device)
        print(f"control arms: {', '.join(controls) or 'none could run'}")
    from crashsearch.flows.champion import nightly_champion

    nightly_champion(home, campaign_id)  # before the report, which links its card
    analysis = analyze_flow(campaign=campaign_id, home=home)
    print(f"nightly {campaign_id}: {result['recorded']} experiments, best val AP {result['best_ap']}; "
          f"report {analysis['report']}")
    return {"campaign": result, "controls": controls, "analysis": analysis}
