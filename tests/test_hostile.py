"""What a careless user typed on the night of the hostile pass: each gets one line and a non-zero exit."""
from __future__ import annotations

import pytest

from crashsearch.flows.cli import main as cli
from crashsearch.lab.settings import resolve_home

AXES = "backbone,encoder,size,loss,lr,batch_size,window_s,augment"
CELL = "pixels,transformer,small,focal_1.0,0.0003,16,4.0,jitter"


def test_analyze_of_a_campaign_whose_runs_all_failed_is_one_line(tmp_path, capsys):
    home = resolve_home(tmp_path / "home")
    log = tmp_path / "failed.csv"
    log.write_text(f"experiment_id,{AXES},val_ap,status\nf1,{CELL},nan,failed\nf2,{CELL},,failed\n")
    assert cli(["import", str(log), "--campaign", "allfail", "--home", str(home.root)]) == 0
    capsys.readouterr()
    assert cli(["analyze", "--campaign", "allfail", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("analyze: campaign 'allfail' has no finished experiment"), err
    assert "2 failed" in err and len(err.splitlines()) == 1
    assert not (home.campaign("allfail") / "report" / "numbers.json").exists()


def test_a_noise_floor_above_the_total_variance_is_not_a_share_above_one():
    from crashsearch.analysis.report import noise_sentence

    line = noise_sentence({"sd": 0.18, "cells": 1, "df": 1, "share": 1.4392, "reason": None})
    assert "of the AP variance" not in line and "within seed noise" in line and "df = 1" in line
    assert "0.5000 of the AP variance" in noise_sentence({"sd": 0.1, "cells": 3, "df": 4, "share": 0.5, "reason": None})


@pytest.mark.parametrize("extra, says", [
    (["--dataset", "/nonexist"], "no such file"),
    (["--dataset", "/etc/passwd"], "unknown header"),
    (["--space", "{tmp}"], "folder"),
    (["--policies", "nope"], "unknown policy nope"),
])
def test_campaign_start_errors_are_one_line_before_any_flow_or_lock(synth_dataset, tmp_path, capsys, monkeypatch,
                                                                   extra, says):
    """Found by the hostile review: these surfaced inside the flow (a temporary server, a Prefect
    traceback) and left a campaign folder holding only its lock."""
    import crashsearch.flows.campaign as campaign

    monkeypatch.setattr(campaign, "get_campaign_flow", lambda: pytest.fail("a flow was started"))
    args = ["--dataset", str(synth_dataset.root), *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    rc = cli(["campaign", "--home", str(tmp_path / "home"), "--campaign", "c5", "--budget", "2", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "home" / "campaigns" / "c5").exists()


def test_an_unknown_campaign_is_an_error_for_leaderboard_and_bugfix_list(tmp_path, capsys):
    """Found by the hostile review: both said 'nothing yet' and exited 0 for a typo."""
    (tmp_path / "campaigns" / "c1").mkdir(parents=True)  # known, with no finished rows: still exit 0
    for argv in (["leaderboard", "--campaign", "nope"], ["bugfix", "--list", "--campaign", "nope"]):
        assert cli([*argv, "--home", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "'nope'" in err and "(campaigns: c1)" in err, err
    for argv in (["leaderboard", "--campaign", "c1"], ["bugfix", "--list", "--campaign", "c1"]):
        assert cli([*argv, "--home", str(tmp_path)]) == 0


def test_top_level_help_prints(capsys):
    """`crashsearch --help` crashed: the leaderboard's help said '95% interval' (argparse read '% i')."""
    with pytest.raises(SystemExit) as stop:
        cli(["--help"])
    assert stop.value.code == 0 and "leaderboard" in capsys.readouterr().out
