"""What a careless user typed on the night of the hostile pass: each gets one line and a non-zero exit."""
from __future__ import annotations

from crashsearch.flows.cli import main as cli
from crashsearch.lab.settings import resolve_home

AXES = "backbone,encoder,size,loss,lr,batch_size,window_s,augment"
CELL = "pixels,transformer,small,focal_1.0,0.0003,16,4.0,jitter"


def test_analyze_of_a_campaign_whose_runs_all_failed_is_one_line(tmp_path, capsys):
    home = resolve_home(tmp_path / "home")
    log = tmp_path / "failed.csv"
    log.write_text(f"experiment_id,{AXES},val_ap\nf1,{CELL},nan\nf2,{CELL},\n")
    assert cli(["import", str(log), "--campaign", "allfail", "--home", str(home.root)]) == 0
    capsys.readouterr()
    assert cli(["analyze", "--campaign", "allfail", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("analyze: campaign 'allfail' has no finished experiment"), err
    assert "2 failed" in err and len(err.splitlines()) == 1
    assert not (home.campaign("allfail") / "report" / "numbers.json").exists()
