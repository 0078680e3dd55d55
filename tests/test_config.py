"""CampaignConfig is the one place a campaign setting is written: the CLI's flags and the flows' parameters are
built from it (add_cli_arguments, flow_parameters), prefect.yaml's deployment parameters are checked against it."""
from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest
import yaml

from crashsearch.tasks.campaign.config import CLI_ONLY, CampaignConfig, flag_of

ROOT = Path(__file__).resolve().parents[1]


def _campaign_parser() -> argparse.ArgumentParser:
    from crashsearch.flows.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["campaign"]


def test_every_command_help_reads_right():
    # bug: `crashsearch leaderboard --help` said "95%% interval" (argparse %-formats a help, not a description)
    from crashsearch.flows.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "95% interval" in sub.choices["leaderboard"].format_help()
    for name, parser in sub.choices.items():
        assert "%%" not in parser.format_help(), name


def _flow_params(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()}


def test_every_campaign_flag_is_a_config_field_with_its_default_and_help():
    actions = {a.option_strings[0]: a for a in _campaign_parser()._actions if a.option_strings
               and a.option_strings[0] not in ("-h", "--home", *CLI_ONLY)}
    fields = {flag_of(f): f for f in CampaignConfig.fields("campaign") if flag_of(f)}
    assert set(actions) == set(fields), "a flag with no field, or a field with no flag"
    for flag, action in actions.items():
        f = fields[flag]
        assert action.dest == f.name and action.help == f.metadata["help"]
        if action.default != []:  # --policy-arg collects a list; the config holds the parsed dict
            assert action.default == f.default, f"{flag}: CLI default {action.default!r} != config {f.default!r}"


@pytest.mark.parametrize("scope", ["campaign", "nightly"])
def test_flow_parameters_are_the_config_fields_with_the_same_defaults(scope):
    from crashsearch.flows.campaign import campaign_flow_fn
    from crashsearch.flows.nightly import nightly_flow

    params = _flow_params(campaign_flow_fn if scope == "campaign" else nightly_flow.fn)
    fields = CampaignConfig.defaults("campaign")
    if scope == "nightly":
        fields.update(CampaignConfig.defaults("nightly"))
    assert set(params) == set(fields)
    for name, default in params.items():
        if name == "dataset":
            assert default is inspect.Parameter.empty
        else:
            assert default == fields[name], f"{scope} flow {name}: default {default!r} != config {fields[name]!r}"


@pytest.mark.parametrize("name", ["campaign", "nightly"])
def test_prefect_reads_flat_parameters_of_the_config_and_validates_a_deployments_values(name):
    """`prefect deploy` builds the parameter schema from the flow's signature (parameter_schema(flow)) and a
    run's parameters are validated against it: one property per setting, typed, with the config's default."""
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema

    from crashsearch.flows.campaign import get_campaign_flow
    from crashsearch.flows.nightly import nightly_flow

    flow = get_campaign_flow() if name == "campaign" else nightly_flow
    schema = parameter_schema(flow)
    assert list(schema.properties) == [f.name for f in CampaignConfig.flow_fields(name)]
    assert schema.required == ["dataset"]
    assert schema.properties["budget"]["default"] == 60 and schema.properties["budget"]["type"] == "integer"
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployed = next(d["parameters"] for d in doc["deployments"] if d["entrypoint"].endswith(f":{name}_flow"))
    validated = flow.validate_parameters(deployed)  # the rest take the config's defaults
    assert {k: validated[k] for k in deployed} == deployed and validated["seed"] == 0
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({**deployed, "budget": "many"})


def test_a_flow_refuses_an_impossible_setting_before_it_runs():
    from crashsearch.flows.campaign import campaign_flow_fn

    with pytest.raises(ValueError, match="budget must be at least 1"):
        campaign_flow_fn("d", budget=0)
    with pytest.raises(TypeError):
        campaign_flow_fn("d", max_inflight=3)


def test_prefect_yaml_parameters_are_known_to_the_config():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    known = {f.name for f in CampaignConfig.fields()}
    for dep in doc["deployments"]:
        if dep["entrypoint"].endswith((":campaign_flow", ":nightly_flow")):
            unknown = set(dep.get("parameters", {})) - known
            assert not unknown, f"{dep['entrypoint']}: unknown parameters {unknown}"
            CampaignConfig.from_params(dep["parameters"])  # and the values make a valid config


def test_the_nightly_deployment_grows_the_campaign_each_night():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    nightly = next(d for d in doc["deployments"] if d["entrypoint"].endswith(":nightly_flow"))
    config = CampaignConfig.from_params(nightly["parameters"])
    assert config.extend and config.target(recorded=config.extend * 3) == config.extend * 4


def test_impossible_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="budget must be at least 1"):
        CampaignConfig(dataset="d", budget=0)
    with pytest.raises(ValueError, match="unknown campaign setting"):
        CampaignConfig.from_params({"dataset": "d", "max_inflight": 3})
    with pytest.raises(ValueError, match="propose_mode"):
        CampaignConfig(dataset="d", propose_mode="fast")
    assert CampaignConfig(dataset="d", budget=10, extend=4).target(8) == 10  # the budget stays the ceiling


def test_cli_refuses_an_impossible_number_without_a_traceback(capsys, tmp_path):
    from crashsearch.flows.cli import main

    assert main(["campaign", "--home", str(tmp_path), "--dataset", str(tmp_path), "--extend", "0"]) == 2
    err = capsys.readouterr().err
    assert "extend must be at least 1" in err and "Traceback" not in err


@pytest.mark.parametrize("low,high", [("lab/store.py", "lab/exchange.py"), ("lab/store.py", "flows/commands/history.py"),
                                      ("flows/distributed.py", "flows/campaign.py")])
def test_no_import_cycle_between_a_module_and_what_builds_on_it(low, high):
    import ast

    def imported(path):
        tree = ast.parse((ROOT / path).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    module = "crashsearch." + high[:-3].replace("/", ".")
    assert module not in imported(low), f"{low} imports {module}, which builds on it"
