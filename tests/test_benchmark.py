"""`crashsearch benchmark`: policies against a surrogate or a table of a recorded history.

What is promised (so a failure says what broke):
- the surrogate recovers a planted history: held-out R^2 > 0.8 and Spearman > 0.9 (1,500 rows),
  and its noise is the replicates' (planted sd 0.008, estimate within [0.005, 0.011]);
- with planted structure (architecture dominates, one group best) tpe and evolution beat random's
  mean best-at-100 over 10 repeats;
- the table objective counts a miss against the budget and gives it no AP;
- benchmark.json has exactly the issue's shape; a rerun with the same seed gives the same numbers,
  with one worker process or two;
- user mistakes (too few ok rows, wrong space, unknown campaign or policy) are one line, exit 2;
- LLM agents run against the fake server: tokens and cost counted, a dollar budget stops them.
"""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pandas as pd
import pytest

from crashsearch.agents import create_policy
from crashsearch.agents.base import VIEW_COLUMNS, HistoryView
from crashsearch.agents.evolution import EvolutionPolicy
from crashsearch.analysis import policy_benchmark as pb
from crashsearch.analysis.surrogate import SurrogateError, fit_surrogate, observed_space
from crashsearch.analysis.synthetic import arch_effects, synthetic_history
from crashsearch.flows.benchmark import benchmark
from crashsearch.flows.cli import main as cli_main
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.space import InvalidCell, Space
from crashsearch.lab.store import Store
from crashsearch.tasks.benchmark import run_benchmark, run_policy

SPACE = Space.load()

SMALL_SPACE = """
name: external
groups:
  arch:
    backbone: [alpha, beta]
    encoder: [gru, tcn, zipformer]
  loss:
    loss: [bce, focal_2.0]
  train:
    lr: [0.0003, 0.001, 0.003, 0.01]
    batch_size: [16, 32]
"""


def planted(n=1500, seed=0, **kw):
    """A history whose best architecture group stands clearly apart (0.05 above the next)."""
    effects = arch_effects(SPACE, 0.04, seed=seed + 1000)
    best = max(effects, key=effects.get)
    effects[best] = sorted(effects.values())[-2] + 0.05
    return synthetic_history(n=n, seed=seed, policies=("random",), effects=effects, **kw), best


def check_shape(doc, policies, budget):
    assert set(doc) == {"objective", "budget", "repeats", "surrogate", "policies"}
    assert set(doc["surrogate"]) == {"holdout_r2", "holdout_spearman"}
    assert list(doc["policies"]) == policies
    for p in doc["policies"].values():
        assert set(p) == {"best_at", "picked_at", "judge", "power_law", "tokens", "cost_usd"}
        assert list(p["best_at"]) == list(p["picked_at"]) == [str(n) for n in pb.benchmark_ns(budget)]
        assert all(set(v) == {"mean", "lo", "hi"} for v in [*p["best_at"].values(), *p["picked_at"].values()])
        assert set(p["power_law"]) == {"a", "b", "c", "r2", "c_lo", "c_hi", "at_bound"}


def test_best_at_keys():
    assert pb.benchmark_ns(1000) == [10, 50, 100, 1000]
    assert pb.benchmark_ns(25000) == [10, 50, 100, 1000, 10000, 25000]
    assert pb.benchmark_ns(100) == [10, 50, 100]
    assert pb.benchmark_ns(30) == [10, 30]
    assert pb.benchmark_ns(5) == [5]


def test_surrogate_recovers_a_planted_history_and_its_noise():
    history, best = planted()
    sur = fit_surrogate(history, SPACE)
    assert sur.fidelity["holdout_r2"] > 0.8 and sur.fidelity["holdout_spearman"] > 0.9, sur.fidelity
    assert 0.005 < sur.noise["sd"] < 0.011, sur.noise
    ids = np.array([c.id for c in SPACE.sample(random.Random(0), 200)])
    mean = sur.predict(ids)
    assert ((mean >= 0) & (mean <= 1)).all()
    draws = sur.sample(ids, np.random.default_rng(0))
    assert 0.004 < np.std(draws - mean) < 0.015  # seed noise, drawn from the replicates
    # the best planted group is the surrogate's best group too
    by_group = pd.DataFrame({"g": [SPACE.cell(int(i)).arch_group for i in ids], "p": mean}).groupby("g")["p"].mean()
    cells = [SPACE.validate({**SPACE.sample(random.Random(1))[0].to_dict(), "backbone": g.split("/")[0],
                             "encoder": g.split("/")[1]}) for g in arch_effects(SPACE)]
    pred = dict(zip([c.arch_group for c in cells], sur.predict([c.id for c in cells])))
    assert max(pred, key=pred.get) == best, by_group


def test_without_replicates_the_surrogate_adds_no_noise_and_says_so():
    history, _ = planted(n=400, replicate_share=0.0)
    sur = fit_surrogate(history, SPACE, folds=2)
    assert sur.noise["reason"] and "no cell was run more than once" in sur.noise["reason"]
    ids = [c.id for c in SPACE.sample(random.Random(0), 20)]
    assert np.array_equal(sur.sample(ids, np.random.default_rng(0)), sur.predict(ids))


def test_too_few_ok_rows_is_one_error_line(tmp_path, capsys):
    history, _ = planted(n=60)
    history.loc[history.index[25:], "status"] = "failed"
    with pytest.raises(SurrogateError, match="ok rows"):
        fit_surrogate(history, SPACE)
    home = resolve_home(tmp_path / "home")
    Store(home).append_table("thin", _arrow(history, "thin"), SPACE)
    assert cli_main(["benchmark", "--home", str(home.root), "--campaign", "thin", "--budget", "20", "--repeats", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ok rows" in err and "need" in err, err
    # the table objective can still replay the few ok rows
    assert cli_main(["benchmark", "--home", str(home.root), "--campaign", "thin", "--budget", "20", "--repeats", "2",
                     "--objective", "table", "--policies", "random", "--out", str(tmp_path / "t")]) == 0


def _arrow(df, campaign):
    import pyarrow as pa

    from crashsearch.lab.schema import experiment_schema

    df = df.assign(campaign=campaign, experiment_id=campaign + "-" + df["experiment_id"])
    return pa.Table.from_pandas(df, schema=experiment_schema(SPACE), preserve_index=False)


@pytest.mark.slow
def test_planted_structure_tpe_and_evolution_beat_random_at_100():
    history, _ = planted(n=2000, seed=3)
    res = run_benchmark(history, SPACE, ["random", "tpe", "evolution"], budget=100, repeats=10, seed=0, workers=2,
                        log=lambda m: None)
    best = {p: np.mean([np.nanmax(r.values) for r in res.runs if r.policy == p]) for p in ("random", "tpe", "evolution")}
    assert best["tpe"] > best["random"] and best["evolution"] > best["random"], best
    doc = pb.summary({p: [r.values for r in res.runs if r.policy == p] for p in best}, 100, 10, "surrogate",
                     res.surrogate.fidelity)
    assert doc["policies"]["tpe"]["best_at"]["100"]["mean"] == pytest.approx(best["tpe"])
    assert all(len(r.values) == 100 and r.stopped == "budget" for r in res.runs)


def test_runs_use_the_policy_interface_and_are_reproducible(tmp_path):
    history, _ = planted(n=600, seed=5)
    a = run_benchmark(history, SPACE, ["evolution", "random"], budget=40, repeats=3, seed=1, workers=1, log=lambda m: None)
    b = run_benchmark(history, SPACE, ["evolution", "random"], budget=40, repeats=3, seed=1, workers=2, log=lambda m: None)
    for ra, rb in zip(a.runs, b.runs):
        assert (ra.policy, ra.repeat) == (rb.policy, rb.repeat)
        assert np.array_equal(ra.cell_ids, rb.cell_ids) and np.allclose(ra.values, rb.values)
    firsts = [tuple(r.cell_ids[:12]) for r in a.runs if r.policy == "random"]
    assert len(set(firsts)) == 3  # independent seeds per repeat
    for r in a.runs:
        assert len(set(r.cell_ids.tolist())) == 40  # a cell is run once per repeat


def test_table_objective_counts_misses_against_the_budget():
    space = Space.from_dict(__import__("yaml").safe_load(SMALL_SPACE))
    rng = np.random.default_rng(0)
    cells = [space.cell(i) for i in rng.choice(space.full_size, 40, replace=False)]
    history = pd.DataFrame([{"cell_id": c.id, "status": "ok", "val_ap": 0.5 + 0.01 * i, **c.values}
                            for i, c in enumerate(cells)])
    res = run_benchmark(history, space, ["random"], budget=60, repeats=2, objective="table", workers=1, log=lambda m: None)
    recorded = dict(zip(history["cell_id"], history["val_ap"]))
    for run in res.runs:
        assert len(run.values) == 60  # misses spent the budget
        hits = run.cell_ids >= 0
        assert np.isnan(run.values[~hits]).all() and (~hits).sum() > 0
        assert np.allclose(run.values[hits], [recorded[c] for c in run.cell_ids[hits]])
    assert res.surrogate is None


def _policy_run(cls, space, budget=60, seed=4):
    rng = np.random.default_rng(0)
    return run_policy(cls(space, seed=seed), space, lambda ids: rng.random(len(ids)), budget).cell_ids


def test_evolution_and_tpe_speedups_leave_proposals_unchanged():
    class FullRanking(EvolutionPolicy):
        """Evolution as it was: a Cell built for every result each round."""

        def _ranked(self, view):
            board = view.leaderboard(k=max(1, len(view.ok)))
            out = []
            for cell_id, ap in zip(board["cell_id"], board["mean_ap"]):
                try:
                    out.append((self.space.cell(int(cell_id)), float(ap)))
                except InvalidCell:
                    continue
            return out

    assert np.array_equal(_policy_run(EvolutionPolicy, SPACE), _policy_run(FullRanking, SPACE))

    # TPE reuses its FrozenTrials across rounds; a policy rebuilt every round (no cache) proposes the same
    tpe = create_policy("tpe", SPACE, seed=2, n_startup_trials=5)
    cols = {c: [] for c in VIEW_COLUMNS + SPACE.axis_names}
    rng = np.random.default_rng(0)
    for rnd in range(5):
        view = HistoryView(SPACE, pd.DataFrame(cols), frozenset(), rnd)
        fresh = create_policy("tpe", SPACE, seed=2, n_startup_trials=5)
        fresh.set_state(tpe.get_state())
        got, want = tpe.propose(view, 6), fresh.propose(view, 6)
        assert [p.cell.id for p in got] == [p.cell.id for p in want]
        for p in got:
            row = {**{c: None for c in VIEW_COLUMNS}, "experiment_id": str(len(cols["cell_id"])), "cell_id": p.cell.id,
                   "status": "ok", "val_ap": float(rng.random()), "proposer": "tpe", **p.cell.values}
            for k, v in row.items():
                cols[k].append(v)


def external_log(folder, n: int = 150, seed: int = 1) -> Space:
    """An external history to import: ``folder``/external.yaml (SMALL_SPACE) and ``folder``/log.csv,
    ``n`` rows in which zipformer and lr 0.001 stand out; returns the space."""
    space_file = folder / "external.yaml"
    space_file.write_text(SMALL_SPACE)
    space = Space.load(space_file)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = space.cell(int(rng.integers(space.full_size)))
        ap = 0.6 + 0.2 * (c["encoder"] == "zipformer") + 0.05 * (c["lr"] == 0.001) + rng.normal(0, 0.01)
        rows.append({**c.values, "val_ap": float(np.clip(ap, 0, 1)), "seed": i})
    pd.DataFrame(rows).to_csv(folder / "log.csv", index=False)
    return space


def test_an_imported_external_history_with_its_own_space(tmp_path, capsys):
    space = external_log(tmp_path)
    space_file = tmp_path / "external.yaml"
    home = resolve_home(tmp_path / "home")
    assert cli_main(["import", str(tmp_path / "log.csv"), "--campaign", "ext", "--space", str(space_file),
                     "--home", str(home.root)]) == 0
    space_file.unlink()  # the import kept the space with the campaign: benchmark needs no --space (before: exit 2)
    assert (home.campaign("ext") / "space.yaml").read_text() == SMALL_SPACE
    out = tmp_path / "bench"
    assert cli_main(["benchmark", "--home", str(home.root), "--campaign", "ext",
                     "--policies", "random,evolution", "--budget", "60", "--repeats", "3", "--out", str(out),
                     "--workers", "1"]) == 0
    doc = json.loads((out / "benchmark.json").read_text())
    check_shape(doc, ["random", "evolution"], 60)
    assert doc["objective"] == "surrogate" and doc["budget"] == 60 and doc["repeats"] == 3
    assert doc["surrogate"]["holdout_r2"] > 0.5
    b = doc["policies"]["evolution"]["best_at"]["60"]
    assert b["lo"] <= b["mean"] <= b["hi"]
    md = (out / "benchmark.md").read_text()
    assert "At N=50, from-scratch arms evolution, random" in md and "held-out R^2" in md and (out / "best_at_n.png").stat().st_size > 10_000
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 * 3 * 60 and set(runs["cell_id"]) <= set(range(space.full_size))
    printed = capsys.readouterr().out
    assert "At N=50" in printed and "evolution: best at N=60" in printed


def test_a_campaigns_own_history_by_default_output_folder(tmp_path):
    history, _ = planted(n=300, seed=2)
    home = resolve_home(tmp_path / "home")
    store = Store(home)
    store.write_campaign("day", {"dataset": "synth-day", "space": SPACE.name, "status": "finished"})
    store.append_table("day", _arrow(history, "day"), SPACE)
    result = benchmark("day", home, "random,evolution", budget=20, repeats=2, workers=1, log=lambda m: None)
    assert result["out"].startswith(str(home.root / "benchmarks" / "day-"))
    check_shape(json.loads(open(result["json"]).read()), ["random", "evolution"], 20)
    with pytest.raises(ValueError, match=r"campaign 'nope' has no experiments .*campaigns: day"):
        benchmark("nope", home)
    with pytest.raises(ValueError, match="unknown policy"):
        benchmark("day", home, "random,hillclimb", budget=10, repeats=1)
    with pytest.raises(ValueError, match="at least 1"):
        benchmark("day", home, "random", budget=0, repeats=1)


def test_observed_space_restricts_to_values_with_results():
    history, _ = planted(n=300)
    history = history[history["backbone"].isin(["pixels", "vjepa2_vitl"])]
    sub = observed_space(SPACE, history)
    assert set(sub.axis("backbone").choices) == {"pixels", "vjepa2_vitl"}
    assert sub.full_size == SPACE.full_size  # ids stay the full space's


# ---- LLM agents against the fake server --------------------------------------------------------------

@pytest.fixture
def llm_server(monkeypatch):
    from tests.fake_llm_server import FakeLLMServer, json_reply, tool_reply

    srv = FakeLLMServer().start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", srv.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-DUMMY-0123456789")
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaTEST-dummy-0123456789")
    pool = [SPACE.cell(i) for i in random.Random(0).sample(range(SPACE.full_size), 5000)]
    counter = {"anthropic": 0, "gemini": 0}

    def responder(api):
        def reply(request):
            n = int(re.search(r"propose exactly (\d+) new", request.text).group(1))
            start = counter[api]
            counter[api] += n
            items = [dict({k: (v if api == "anthropic" else str(v)) for k, v in c.values.items()}, rationale=f"{api} {start}")
                     for c in pool[start:start + n]]
            return (tool_reply("propose_experiments", {"proposals": items}, input_tokens=2000, output_tokens=150)
                    if api == "anthropic" else json_reply({"proposals": items}, prompt_tokens=2000, output_tokens=150))
        return reply

    srv.respond_with("anthropic", responder("anthropic"))
    srv.respond_with("gemini", responder("gemini"))
    yield srv
    srv.stop()


FAST = dict(timeout_s=10.0, retry_base_s=0.001, retry_max_s=0.01)


def test_llm_agents_count_tokens_and_cost_and_stop_at_their_budget(llm_server, tmp_path):
    history, _ = planted(n=300, seed=4)
    home = resolve_home(tmp_path / "home")
    Store(home).append_table("day", _arrow(history, "day"), SPACE)
    # $0.05 for claude over 2 repeats: $0.025 a repeat, two calls of about $0.014 each
    result = benchmark("day", home, "claude,gemini,random", budget=60, repeats=2, workers=1, max_usd=0.05,
                       policy_kwargs={"claude": FAST, "gemini": dict(FAST, budget={"usd": 100})}, log=lambda m: None)
    doc, runs = result["doc"], result["runs"].runs
    check_shape(doc, ["claude", "gemini", "random"], 60)
    claude = [r for r in runs if r.policy == "claude"]
    assert all(len(r.values) == 24 and "dollar budget exhausted" in r.stopped for r in claude), [r.stopped for r in claude]
    assert doc["policies"]["claude"]["best_at"]["60"] == {"mean": None, "lo": None, "hi": None}
    assert doc["policies"]["claude"]["best_at"]["10"]["mean"] is not None
    gemini = [r for r in runs if r.policy == "gemini"]
    assert all(len(r.values) == 60 for r in gemini)
    for name in ("claude", "gemini"):
        assert doc["policies"][name]["tokens"] > 0 and doc["policies"][name]["cost_usd"] > 0
    assert doc["policies"]["random"]["tokens"] == 0
    assert "stopped before the budget" in open(result["md"]).read()
    assert llm_server.unscripted == 0


def test_an_llm_agent_without_its_key_is_skipped_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    history, _ = planted(n=300, seed=4)
    lines = []
    res = run_benchmark(history, SPACE, ["claude", "random"], budget=12, repeats=1, workers=1, log=lines.append)
    assert "claude" in res.skipped and any(line.startswith("claude skipped:") for line in lines)
    assert {r.policy for r in res.runs} == {"random"}


def test_a_poor_surrogate_is_flagged_in_the_write_up():
    runs = {"random": [np.array([0.5, 0.6, 0.55]), np.array([0.4, 0.7, 0.6])]}
    doc = pb.summary(runs, 3, 2, "surrogate", {"holdout_r2": -0.1, "holdout_spearman": 0.39})
    assert pb.low_fidelity(doc) and "Warning: held-out R^2 below 0.5" in pb.markdown(doc, "", {}, None)
    doc = pb.summary(runs, 3, 2, "surrogate", {"holdout_r2": 0.9, "holdout_spearman": 0.95})
    assert not pb.low_fidelity(doc) and "Warning" not in pb.markdown(doc, "", {}, None)
    assert doc["policies"]["random"]["best_at"]["3"]["mean"] == pytest.approx(0.65)
    assert not pb.low_fidelity(pb.summary(runs, 3, 2, "table"))


def test_a_registered_policy_is_benchmarked_under_its_own_name():
    from crashsearch.agents import _REGISTRY, register_policy

    register_policy("random_alias", "crashsearch.agents.random_search:RandomPolicy")
    try:
        history, _ = planted(n=200, seed=6)
        res = run_benchmark(history, SPACE, ["random_alias", "random"], budget=12, repeats=2, workers=2, log=lambda m: None)
    finally:
        _REGISTRY.pop("random_alias", None)
    assert [r.policy for r in res.runs] == ["random_alias", "random_alias", "random", "random"]


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_says_one_line(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    history, _ = planted(n=300, seed=8)
    home = resolve_home(tmp_path / "home")
    Store(home).append_table("day", _arrow(history, "day"), SPACE)
    proc = subprocess.Popen([sys.executable, "-m", "crashsearch", "benchmark", "--home", str(home.root), "--campaign", "day",
                             "--policies", "tpe", "--budget", "5000", "--repeats", "4", "--out", str(tmp_path / "out")],
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        first = proc.stderr.readline()  # the surrogate's line: the worker pool starts next
        assert "surrogate" in first, first
        deadline = time.time() + 60
        kids = []
        while time.time() < deadline and len(kids) < 2:
            time.sleep(0.5)
            kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)  # a run that ignored the signal fails here, not hangs
        assert proc.returncode == 130
    finally:
        proc.kill()
    assert err.strip() == "interrupted; finished experiments are kept", err
    time.sleep(1)
    assert kids and not [k for k in kids if os.path.exists(f"/proc/{k}") and open(f"/proc/{k}/stat").read().split()[2] != "Z"]
    assert not (tmp_path / "out" / "benchmark.json").exists()  # nothing half-written
