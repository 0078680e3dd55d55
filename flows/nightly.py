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
from crashsearch.tasks.campaign.config import CampaignConfig, flow_parameters

campaign_flow = get_campaign_flow()


@flow(name="nightly", log_prints=True)
@flow_parameters("nightly")
def nightly_flow(config: CampaignConfig) -> dict:
    """Campaign, then control arms if ``control_budget`` > 0, then analyze.

    The parameters are CampaignConfig's fields, the campaign's and the nightly's own
    (``flow_parameters``; tasks/campaign/config.py says what each one means). ``budget`` is the
    campaign's total; ``extend`` N makes each night one run that adds N experiments (the
    deployment in prefect.yaml does), so the campaign grows every night until ``budget``. Returns
    {"campaign": the campaign flow's result, "controls": control campaign ids, "analysis": the
    analyze flow's result}.
    """
    result = campaign_flow(**config.flow_params("campaign"))
    campaign_id = result["campaign"]
    controls: list[str] = []
    if config.control_budget > 0:
        controls = run_control_arms(config.home, config.dataset, campaign_id, config.control_budget,
                                    policies=tuple(p.strip() for p in config.control_policies.split(",") if p.strip()),
                                    space_path=config.space, device=config.device)
        print(f"control arms: {', '.join(controls) or 'none could run'}")
    from crashsearch.flows.champion import nightly_champion

    nightly_champion(config.home, campaign_id)  # before the report, which links its card
    analysis = analyze_flow(campaign=campaign_id, home=config.home)
    print(f"nightly {campaign_id}: {result['recorded']} experiments, best val AP {result['best_ap']}; "
          f"report {analysis['report']}")
    return {"campaign": result, "controls": controls, "analysis": analysis}
