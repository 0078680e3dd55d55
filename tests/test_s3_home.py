"""A home on object storage end to end: the CLI against a real S3 API (moto in server mode on 127.0.0.1).

The campaign, its resume, ``query``, ``leaderboard`` and ``analyze`` run with ``--home s3://bucket/home``;
the history is on the server, nothing of it in the local scratch folder; a killed writer's lease is
taken over once it has expired; two writers are refused; no secret reaches the home or the scratch.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.s3_server import TEST_SECRET

SPACE = """
name: tiny-s3
groups:
  arch:
    backbone: [pixels]
    encoder: [meanpool_mlp, gru]
    size: [small]
  loss:
    loss: [bce, focal_2.0]
  train:
    lr: [0.001, 0.003, 0.01]
    batch_size: [16, 32]
  data:
    window_s: [1.0, 2.0]
    augment: [none]
fixed:
  epochs: 2
  weight_decay: 0.01
  class_balance: true
  horizons_s: [0.5, 1.0, 1.5]
"""


@pytest.fixture
def s3_lab(s3_home, synth_dataset, tmp_path, monkeypatch):
    """(s3 home URL, Home, dataset, space path): the dataset's pixels features extracted into the
    home (on the bucket; its local scratch folder is a fresh one under tmp_path)."""
    from crashsearch.lab.settings import resolve_home
    from crashsearch.tasks.extract import extract_dataset

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CRASHSEARCH_LEASE_SECONDS", "6")
    home = resolve_home(s3_home)
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    return s3_home, home, synth_dataset, str(space)


def _campaign_args(url: str, ds, space: str, budget: int, campaign: str = "c-s3") -> list[str]:
    return ["campaign", "--home", url, "--dataset", str(ds.root), "--space", space, "--budget", str(budget),
            "--round-size", "2", "--seeds", "1", "--policies", "random", "--campaign", campaign, "--device", "cpu"]


@pytest.mark.slow
def test_a_campaign_on_an_s3_home_runs_resumes_and_query_leaderboard_and_analyze_read_it(s3_lab, capsys):
    from crashsearch.flows.cli import main as cli
    from crashsearch.lab.storage import backend_for
    from crashsearch.lab.store import Store

    url, home, ds, space = s3_lab
    assert cli(_campaign_args(url, ds, space, budget=4)) == 0
    assert cli(_campaign_args(url, ds, space, budget=6)) == 0  # the resume runs the 2 missing
    backend = backend_for(url)
    keys = backend.list("campaigns/c-s3/")
    assert "campaigns/c-s3/campaign.json" in keys and any(k.startswith("campaigns/c-s3/log/part-") for k in keys)
    # a resume elsewhere finds the policies' state, the summary and the campaign's own space on the bucket
    assert {"campaigns/c-s3/state.json", "campaigns/c-s3/summary.txt", "campaigns/c-s3/space.yaml"} <= set(keys)
    other = Path(space).with_name("other.yaml")
    other.write_text(SPACE.replace("lr: [0.001, 0.003, 0.01]", "lr: [0.001, 0.01]"))
    capsys.readouterr()
    assert cli(_campaign_args(url, ds, str(other), budget=8)) == 2  # its cell ids would mean other cells
    assert "differs: lr lost [0.003]" in capsys.readouterr().err
    assert "campaigns/c-s3/lease.json" not in keys  # released
    assert not (home.root / "campaigns" / "c-s3" / "log").exists()  # the history is on the server only
    assert Store(home).experiments("c-s3").shape[0] == 6
    capsys.readouterr()

    assert cli(["query", "SELECT count(*) AS n, count(DISTINCT experiment_id) AS ids FROM experiments", "--home", url]) == 0
    out = capsys.readouterr().out
    assert out.split()[:4] == ["n", "ids", "6", "6"], out
    assert cli(["leaderboard", "--home", url, "-k", "3"]) == 0
    board = capsys.readouterr().out
    assert "rank" in board and "pixels/" in board, board
    assert cli(["analyze", "--campaign", "c-s3", "--home", url]) == 0
    capsys.readouterr()
    # a query stays in the home's campaigns: the feature cache in the scratch folder is out of reach
    assert cli(["query", f"SELECT * FROM read_parquet('{home.root}/cache/**/*.parquet')", "--home", url]) != 0
    assert cli(["query", f"SELECT * FROM read_text('{url}/../other')", "--home", url]) != 0

    # compaction on the bucket, under the campaign's lease: the parts merged into one object, no row lost
    from crashsearch.lab.space import Space

    for i in range(3):
        Store(home).append("c-more", [{"experiment_id": f"m{i}", "cell_id": i, "status": "ok", "val_ap": 0.5}],
                           Space.load(space))
    assert len(backend.list("campaigns/c-more/log/")) == 3
    assert cli(["compact", "--home", url, "--campaign", "c-more"]) == 0
    assert "merged 3 files into one (3 rows)" in capsys.readouterr().out
    assert len(backend.list("campaigns/c-more/log/")) == 1
    assert sorted(Store(home).experiments("c-more")["experiment_id"]) == ["m0", "m1", "m2"]
    assert cli(["status", "--home", url]) == 0
    assert "c-s3" in capsys.readouterr().out

    # the notebook API reads it too
    import crashsearch

    lab = crashsearch.open_home(url)
    assert repr(lab) == f"crashsearch home {url}"
    assert len(lab.history_df("c-s3")) == 6 and len(lab.history().df()) == 9  # history(): globs over s3://
    assert lab.leaderboard("c-s3", k=3)["rank"].tolist() == [1, 2, 3]
    lab.close()

    # history.duckdb of an s3 home: a local file on request, whose views name the s3:// objects
    assert cli(["catalog", "--home", url]) == 2
    assert "--out" in capsys.readouterr().err
    out = home.root.parent / "history.duckdb"
    assert cli(["catalog", "--home", url, "--out", str(out)]) == 0
    con = duckdb.connect(str(out), read_only=True)
    backend.attach(con)  # a client reads them with httpfs; here with the same filesystem registered
    assert con.execute("SELECT count(*) FROM experiments WHERE campaign = 'c-s3'").fetchone() == (6,)
    assert con.execute("SELECT id FROM campaigns ORDER BY id").fetchall() == [("c-more",), ("c-s3",)]
    con.close()

    for key in backend.list(""):  # no credential reaches the home, its scratch folder or the logs
        assert TEST_SECRET.encode() not in backend.read(key), key
    for path in Path(home.root).rglob("*"):
        if path.is_file():
            assert TEST_SECRET.encode() not in path.read_bytes(), path


WRITER = """
import sys
from crashsearch.flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_writers_lease_is_taken_over_after_it_expires(s3_lab, capsys):
    from crashsearch.flows.cli import main as cli
    from crashsearch.lab.storage import backend_for

    url, home, ds, space = s3_lab
    backend = backend_for(url)
    writer = subprocess.Popen([sys.executable, "-c", WRITER] + _campaign_args(url, ds, space, budget=400),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not backend.exists("campaigns/c-s3/lease.json") and time.time() < deadline and writer.poll() is None:
            time.sleep(0.2)
        holder = json.loads(backend.read("campaigns/c-s3/lease.json"))
        assert holder["pid"] == writer.pid
        capsys.readouterr()
        assert cli(_campaign_args(url, ds, space, budget=4)) == 2  # two writers: the second is refused
        err = capsys.readouterr().err
        assert f"pid {writer.pid}" in err and len(err.strip().splitlines()) == 1, err
    finally:
        writer.send_signal(signal.SIGKILL)  # dies holding the lease: nothing releases it
        writer.wait()
    # as seen from another host the dead pid means nothing: the lease holds until it expires
    lease = json.loads(backend.read("campaigns/c-s3/lease.json"))
    backend.put("campaigns/c-s3/lease.json", json.dumps({**lease, "host": "gpu-node-7"}).encode())
    assert cli(_campaign_args(url, ds, space, budget=4)) == 2
    assert "gpu-node-7" in capsys.readouterr().err
    time.sleep(max(0.0, lease["expires"] - time.time()) + 0.5)
    recorded_before = len(_ids(url))
    assert cli(_campaign_args(url, ds, space, budget=recorded_before + 2)) == 0  # taken over after expiry
    assert len(_ids(url)) == recorded_before + 2
    assert not backend.exists("campaigns/c-s3/lease.json")


def _ids(url: str) -> set[str]:
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store

    return set(Store(resolve_home(url, create=False)).experiments("c-s3")["experiment_id"])


# ---- kept heads, the champion and in-flight batches on the bucket: any machine of the pool sees them ----
# "Another machine" is another CRASHSEARCH_SCRATCH: the home's local scratch folder is then a fresh one.


def _second_machine(monkeypatch, tmp_path, name: str, url: str, ds=None):
    """The home as a machine that did not run the campaign sees it (its own scratch folder); with ``ds``,
    the dataset's features extracted there too (a no-op when the first machine's are on the bucket)."""
    from crashsearch.lab.settings import resolve_home
    from crashsearch.tasks.extract import extract_dataset

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / name))
    home = resolve_home(url)
    if ds is not None:
        extract_dataset(ds, "pixels", home=home, progress=False, log=lambda *_: None)
    return home


@pytest.mark.slow
def test_kept_heads_live_on_the_bucket_and_any_machine_packages_the_champion_and_predicts(s3_lab, tmp_path, monkeypatch,
                                                                                          capsys):
    """Before: the heads went to the scratch folder of the machine that trained them, so `champion` on
    another machine retrained the leader (or failed on a changed code version), and the nightly package
    stayed on one node."""
    from crashsearch.flows.champion import nightly_champion
    from crashsearch.flows.cli import main as cli
    from crashsearch.lab.storage import backend_for
    from crashsearch.lab.store import Store
    from crashsearch.tasks.keep import kept_heads, top_cells

    url, home, ds, space = s3_lab
    assert cli(_campaign_args(url, ds, space, budget=8) + ["--keep-models", "1"]) == 0
    assert f"under {url}/campaigns/c-s3/models" in capsys.readouterr().out  # the summary names the bucket
    backend = backend_for(url)
    heads = [k for k in backend.list("campaigns/c-s3/models/") if k.endswith(".safetensors")]
    assert heads, backend.list("campaigns/c-s3/")
    assert not (home.root / "campaigns" / "c-s3" / "models").exists()  # nothing in the scratch folder
    df = Store(home).experiments("c-s3")
    # collected on the bucket as the leaders changed: only the runs of the top cell are left
    kept = kept_heads(home, "c-s3")
    assert {k.cell_id for k in kept} <= top_cells(df, 1) and len(kept) == len(heads)
    assert {k.location for k in kept} == {f"{url}/{key}" for key in heads}

    other = _second_machine(monkeypatch, tmp_path, "scratch-2", url, ds)
    assert other.root != home.root
    pkg = tmp_path / "pkg"
    capsys.readouterr()
    assert cli(["champion", "--home", url, "--campaign", "c-s3", "--out", str(pkg)]) == 0
    card = json.loads((pkg / "card.json").read_text())
    assert card["package_run"]["origin"] == "kept"  # the bucket's head, not a retrained one
    assert card["package_run"]["experiment_id"] in {k.experiment_id for k in kept}
    assert card["package_run"]["evaluated"]["val_ap"] == pytest.approx(card["package_run"]["recorded"]["val_ap"],
                                                                        abs=1e-5)

    # or published straight to object storage, outside the home (inside it is the nightly's place)
    published_at = url.rsplit("/", 1)[0] + "/detectors/c-s3"
    assert cli(["champion", "--home", url, "--campaign", "c-s3", "--out", published_at]) == 0
    assert json.loads(backend_for(published_at).read("card.json"))["cell_id"] == card["cell_id"]
    capsys.readouterr()
    assert cli(["champion", "--home", url, "--campaign", "c-s3", "--out", f"{url}/pkg"]) == 2
    err = capsys.readouterr().err
    assert "inside the home" in err and len(err.strip().splitlines()) == 1, err

    # the nightly package goes to the bucket, card.json last, where every node finds it
    card_md = nightly_champion(other, "c-s3")
    assert card_md == f"{url}/campaigns/c-s3/champion/card.md"
    published = set(backend.list("campaigns/c-s3/champion/"))
    assert {f"campaigns/c-s3/champion/{n}" for n in ("card.json", "card.md", "model.json", "head.safetensors")} <= published
    assert json.loads(backend.read("campaigns/c-s3/champion/card.json"))["cell_id"] == card["cell_id"]
    assert nightly_champion(other, "c-s3") == card_md and "unchanged" in capsys.readouterr().out

    _second_machine(monkeypatch, tmp_path, "scratch-3", url)  # a serving node: no features, no campaign
    out = tmp_path / "pred.json"
    assert cli(["predict", "--model", f"{url}/campaigns/c-s3/champion", str(ds.videos[0].path), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert 0.0 <= row["max_risk"] <= 1.0
    assert cli(["predict", "--model", published_at, str(ds.videos[0].path), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == [row]  # the same model: the same risk
    capsys.readouterr()
    assert cli(["predict", "--model", f"{url}/campaigns/nope/champion", str(ds.videos[0].path)]) == 2
    err = capsys.readouterr().err
    assert "holds no model package" in err and len(err.strip().splitlines()) == 1, err


def test_collect_deletes_the_heads_on_the_bucket_whose_cell_left_the_top(s3_home, tmp_path, monkeypatch):
    import pandas as pd
    import torch

    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store
    from crashsearch.tasks.keep import collect, disk_use, kept_heads, save_head

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    home = resolve_home(s3_home)
    backend = Store(home).backend
    for eid, cell in (("e1", 1), ("e2", 2), ("e9", 9)):
        save_head(backend, "c", eid, {"w": torch.full((2,), float(cell))},
                  {"experiment_id": eid, "cell_id": cell, "seed": 0, "cell": {}})
    assert backend.list("campaigns/c/models/") == [f"campaigns/c/models/e{i}.safetensors" for i in (1, 2, 9)]
    assert not (home.root / "campaigns" / "c" / "models").exists()
    assert disk_use(home, "c")[0] == 3
    history = pd.DataFrame({"experiment_id": ["e1", "e2"], "cell_id": [1, 2], "status": ["ok", "ok"],
                            "val_ap": [0.6, 0.9]})  # cell 2 now leads; e9 is another worker's, not landed yet
    assert collect(backend, "c", history, keep=1) == ["campaigns/c/models/e1.safetensors"]
    assert backend.list("campaigns/c/models/") == ["campaigns/c/models/e2.safetensors", "campaigns/c/models/e9.safetensors"]
    other = _second_machine(monkeypatch, tmp_path, "scratch-2", s3_home)
    heads = {k.experiment_id: k for k in kept_heads(other, "c")}
    assert sorted(heads) == ["e2", "e9"] and torch.equal(heads["e2"].state()["w"], torch.full((2,), 2.0))


def test_status_on_another_machine_lists_a_distributed_campaigns_batches_in_flight(s3_home, tmp_path, monkeypatch,
                                                                                   capsys):
    """Before: inflight.json went to the dispatching machine's scratch folder; `status` elsewhere said 0."""
    import uuid

    from crashsearch.flows.cli import main as cli
    from crashsearch.flows.distributed import DistributedExecutor, _Dispatch
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.space import Space
    from crashsearch.lab.storage import backend_for
    from crashsearch.lab.store import Store
    from crashsearch.tasks.record import Job, make_row

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    backend_for(s3_home).put("campaigns/empty/diagnoses.jsonl", b"")  # a home, with no campaign to show
    assert cli(["status", "--home", s3_home]) == 0
    assert capsys.readouterr().out.strip() == f"no campaigns under {s3_home}"  # not the scratch folder's path
    home = resolve_home(s3_home)
    space = Space.from_dict({"name": "s", "groups": {"arch": {"backbone": ["pixels"], "encoder": ["gru"], "size": ["small"]},
                                                     "train": {"lr": [0.001, 0.01, 0.1]}}})
    jobs = [Job(space.cell(i), seed=1) for i in range(3)]
    store = Store(home)
    store.append("dist", [make_row(jobs[0], campaign="dist", dataset="d", space=space, code_version="v", status="ok",
                                   metrics={"val_ap": 0.7})], space)
    store.write_campaign("dist", {"status": "running", "pid": 1, "host": "gpu-node-7", "budget": 8, "dataset": "d"})
    ex = DistributedExecutor("train-batch/gpu", home, "dist", space, "d", log=lambda m: None)
    d = _Dispatch(jobs, jobs, uuid.uuid4(), "run-a", 1, 0.0)
    ex._publish(1, {d.run_id: d})
    assert backend_for(s3_home).exists("campaigns/dist/inflight.json")

    _second_machine(monkeypatch, tmp_path, "scratch-2", s3_home)
    capsys.readouterr()
    assert cli(["status", "--home", s3_home]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("dist "))
    assert "running (on gpu-node-7)" in line and "1/8" in line, line
    assert line.split()[5] == "2", line  # in flight: the two jobs not recorded yet
    ex._publish(1, None)  # the last call ended: the file goes
    assert not backend_for(s3_home).exists("campaigns/dist/inflight.json")
    assert cli(["status", "--home", s3_home]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("dist "))
    assert line.split()[5] == "0", line


def _package(folder: Path, tag: str, onnx: bool = True) -> Path:
    """A package folder whose every file says which package it belongs to (publish and fetch parse nothing)."""
    folder.mkdir(parents=True)
    for name in ("model.json", "head.safetensors", "card.md", "card.json") + (("head.onnx",) if onnx else ()):
        (folder / name).write_text(f"{tag} {name}")
    return folder


def test_a_package_published_on_the_bucket_is_read_whole_while_a_new_one_replaces_it(s3_home, tmp_path, monkeypatch):
    """No rename on an object store: the card goes first and comes last, and a reader that saw the card
    change while it read the files reads again, so it never mixes two packages' files."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.storage import backend_for
    from crashsearch.lab.storage_s3 import S3Backend
    from crashsearch.tasks.champion import fetch_package, publish_package

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    url = f"{s3_home}/models/detector"
    backend = backend_for(url)
    backend.put("model.json", b"a crash half-way: no card")
    with pytest.raises(UserError, match="holds no model package"):
        fetch_package(url)
    publish_package(_package(tmp_path / "a", "A"), backend, "")
    real_read, replaced = S3Backend.read, []

    def read(self, key):  # package B is published while the reader is between its files
        data = real_read(self, key)
        if key == "head.safetensors" and not replaced:
            replaced.append(key)
            publish_package(_package(tmp_path / "b", "B", onnx=False), backend, "")
        return data

    monkeypatch.setattr(S3Backend, "read", read)
    local = fetch_package(url)
    assert replaced
    assert {p.name: p.read_text() for p in local.iterdir()} == {
        n: f"B {n}" for n in ("model.json", "head.safetensors", "card.md", "card.json")}  # B whole, A's ONNX gone
    assert not backend.exists("head.onnx")
    assert fetch_package(url) == local  # the same card: the local copy
    assert backend.list("") == ["card.json", "card.md", "head.safetensors", "model.json"]

# ---- benchmark reads an s3 home ------------------------------------------------------------------------------
def test_benchmark_reads_an_s3_homes_history_and_kept_space(s3_home, tmp_path, monkeypatch, capsys):
    """An imported history on the bucket is benchmarked with no space file and the home's scratch folder
    removed (another node). A campaign it lacks is named with the home's URL; an --out URL is refused in one line."""
    import shutil

    from crashsearch.flows.cli import main as cli
    from crashsearch.lab.settings import resolve_home
    from tests.test_benchmark import external_log

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.chdir(tmp_path)
    external_log(tmp_path, n=40)
    space_file = tmp_path / "external.yaml"
    assert cli(["import", str(tmp_path / "log.csv"), "--campaign", "ext", "--space", str(space_file), "--home", s3_home]) == 0
    space_file.unlink()
    home = resolve_home(s3_home)
    shutil.rmtree(home.root)  # another node: the history and its space come from the bucket
    capsys.readouterr()
    args = ["benchmark", "--home", s3_home, "--campaign", "ext", "--policies", "random", "--budget", "8",
            "--repeats", "2", "--workers", "1"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "random: best at N=8" in out, out
    written = Path(out.strip().splitlines()[-1].removeprefix("wrote "))
    assert written.parent.parent == resolve_home(s3_home).root / "benchmarks"  # outputs: the scratch folder
    doc = json.loads((written.parent / "benchmark.json").read_text())
    assert doc["budget"] == 8 and doc["repeats"] == 2 and list(doc["policies"]) == ["random"]

    assert cli(["benchmark", "--home", s3_home, "--campaign", "nope", "--budget", "8", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"has no experiments under {s3_home} (campaigns: ext)"), err  # was: the scratch path
    url_out = f"{s3_home}/benchmarks/x"
    assert cli(args + ["--out", url_out]) == 2  # was: a local folder named "s3:" in the working directory
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a URL" in err, err
    assert not (tmp_path / "s3:").exists()


# ---- hostile: credentials and settings as a user meets them -----------------------------------------------------
def _cli_alone(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """The CLI in a process of its own (its s3fs client built from ``env``, not this process's)."""
    return subprocess.run([sys.executable, "-c", WRITER] + args, env=env, capture_output=True, text=True, timeout=120)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_wrong_or_missing_credentials_are_one_line_that_names_no_secret(s3_home, tmp_path, monkeypatch):
    """A store that checks keys (moto with authentication on) refuses a key it does not know: that was an
    internal error with a traceback file; no credentials at all read as an unreachable endpoint."""
    import os

    from tests.s3_server import S3Server

    env = {**os.environ, "CRASHSEARCH_SCRATCH": str(tmp_path / "scratch")}
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # moto checks every request's key from the first
    strict = S3Server().start()
    try:
        proc = _cli_alone(["status", "--home", "s3://any-bucket/home"], {**env, "AWS_ENDPOINT_URL": strict.endpoint})
    finally:
        strict.stop()
    line = _one_line(proc)
    assert "refused access (InvalidAccessKeyId)" in line and "AWS_ACCESS_KEY_ID" in line, line
    assert TEST_SECRET not in proc.stderr + proc.stdout

    bare = {k: v for k, v in env.items() if not k.startswith("AWS_") or k in ("AWS_ENDPOINT_URL", "AWS_REGION")}
    bare |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
             "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(tmp_path)}
    line = _one_line(_cli_alone(["status", "--home", s3_home], bare))
    assert line == f"status: no AWS credentials for the home {s3_home}: set AWS_ACCESS_KEY_ID and " \
                   "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (an instance role serves too)", line


def test_a_bad_read_cache_cap_is_one_line_from_the_cli(s3_home, tmp_path):
    """CRASHSEARCH_OBJECT_CACHE_MB=nan was an internal error (exit 70) with a traceback file."""
    import os

    env = {**os.environ, "CRASHSEARCH_SCRATCH": str(tmp_path / "scratch"), "CRASHSEARCH_OBJECT_CACHE_MB": "nan"}
    line = _one_line(_cli_alone(["leaderboard", "--home", s3_home], env))
    assert line.startswith("leaderboard: CRASHSEARCH_OBJECT_CACHE_MB='nan'"), line


@pytest.mark.slow
def test_ctrl_c_during_an_s3_campaign_releases_the_lease_and_keeps_what_it_recorded(s3_lab):
    """As a user meets it: Ctrl-C mid-run ends it in one line (exit 130), the lease is given back at once (the
    next run need not wait for it to expire), campaign.json says interrupted and every experiment the run
    reported as recorded is on the bucket."""
    import re

    from crashsearch.lab.storage import backend_for

    url, home, ds, space = s3_lab
    bigger = Path(space).with_name("bigger.yaml")  # 144 cells of 20 epochs: still running when interrupted
    bigger.write_text(SPACE.replace("lr: [0.001, 0.003, 0.01]", "lr: [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03]")
                      .replace("batch_size: [16, 32]", "batch_size: [8, 16, 32]").replace("epochs: 2", "epochs: 20"))
    backend = backend_for(url)
    run = subprocess.Popen([sys.executable, "-c", WRITER] + _campaign_args(url, ds, str(bigger), budget=144),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not backend.list("campaigns/c-s3/log/") and time.time() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert run.poll() is None, "the campaign ended before it could be interrupted"
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; finished experiments are kept" and "Traceback" not in err, err
    assert not backend.exists("campaigns/c-s3/lease.json")  # given back, not left to expire
    assert json.loads(backend.read("campaigns/c-s3/campaign.json"))["status"] == "interrupted"
    reported = int(re.search(r"\((\d+)/144 recorded", out).group(1))
    assert 0 < reported < 144 and len(_ids(url)) == reported


def test_the_demo_on_an_s3_home_is_refused_in_one_line(s3_home, tmp_path, capsys):
    """It ran in the home's scratch folder as if it were a local home, and said so nowhere."""
    from crashsearch.flows.cli import main as cli

    assert cli(["demo", "--home", s3_home, "--tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"the demo runs in a local folder, not on {s3_home}" in err, err

# ---- check, messages and a damaged campaign.json on an s3 home ------------------------------------------------
def _small_history(s3_home: str, tmp_path, monkeypatch):
    """(Home, Store, space): campaigns c1 (4 rows) and c2 (3 rows) on the bucket, written by the store."""
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.space import Space
    from crashsearch.lab.store import Store
    from tests.test_safety import rows

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    space = Space.from_dict({"name": "s", "groups": {"arch": {"backbone": ["pixels"], "encoder": ["gru", "tcn"]},
                                                     "train": {"lr": [0.001, 0.003, 0.01, 0.1]}}})
    home = resolve_home(s3_home)
    store = Store(home)
    store.append("c1", rows(space, 4), space)
    store.write_campaign("c1", {"dataset": "synth-day", "status": "finished"})
    store.append("c2", rows(space, 3, prefix="f"), space)
    return home, store, space


def _damaged_part(store, campaign: str) -> bytes:
    """A log file of two row groups whose second one is corrupt: its first row group still reads."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = store.experiments(campaign).head(4)
    table = pa.Table.from_pandas(table.assign(experiment_id="x" + table["experiment_id"]), preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=2, compression="none")
    data = bytearray(sink.getvalue())
    start = pq.read_metadata(io.BytesIO(bytes(data))).row_group(1).column(0).data_page_offset
    data[start:start + 64] = b"\xff" * 64
    return bytes(data)


def test_check_finds_damage_on_the_bucket_names_it_by_url_and_repair_keeps_it_in_quarantine_there(
        s3_home, tmp_path, monkeypatch, capsys):
    """Before: check globbed the scratch folder and said "checked 0 log files ... no damage" while a damaged
    part sat on the bucket; --campaign named the scratch folder; --repair moved nothing."""
    from crashsearch.flows.cli import main as cli

    home, store, _ = _small_history(s3_home, tmp_path, monkeypatch)
    damaged = _damaged_part(store, "c1")
    log = "campaigns/c1/log/"
    store.backend.put(log + "part-20250102T000000.000000Z-damaged.parquet", damaged)
    store.backend.put(log + "part-20250103T000000.000000Z-garbage.parquet", b"garbage")
    capsys.readouterr()
    assert cli(["check", "--home", s3_home]) == 1
    out = capsys.readouterr().out
    assert f"damaged: {s3_home}/{log}part-20250102T000000.000000Z-damaged.parquet (" in out, out
    assert f"damaged: {s3_home}/{log}part-20250103T000000.000000Z-garbage.parquet (" in out, out
    assert "checked 4 log files in 2 campaigns: 2 damaged" in out and str(home.root) not in out, out

    assert cli(["check", "--home", s3_home, "--campaign", "c1", "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"moved to {s3_home}/quarantine/c1/part-20250102T000000.000000Z-damaged.parquet, 2 readable rows" in out
    assert f"moved to {s3_home}/quarantine/c1/part-20250103T000000.000000Z-garbage.parquet, 0 readable rows" in out
    assert store.backend.read("quarantine/c1/part-20250102T000000.000000Z-damaged.parquet") == damaged  # kept whole
    assert store.backend.read("quarantine/c1/part-20250103T000000.000000Z-garbage.parquet") == b"garbage"
    assert not [k for k in store.log_keys("c1") if "damaged" in k or "garbage" in k]
    assert not (home.root / "quarantine").exists()  # on the bucket, not in the scratch folder
    ids = set(store.experiments("c1")["experiment_id"])
    assert len(ids) == 6 and {"xe0", "xe1"} <= ids  # its own rows, and the readable row group's
    assert len(store.experiments("c2")) == 3
    assert cli(["check", "--home", s3_home]) == 0
    assert "no damage" in capsys.readouterr().out

    assert cli(["check", "--home", s3_home, "--campaign", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert f"under {s3_home} (campaigns: c1, c2)" in err and str(home.root) not in err, err


def test_messages_on_an_s3_home_name_its_url_not_the_scratch_folder(s3_home, tmp_path, monkeypatch, capsys):
    """Before: a missing campaign for analyze, leaderboard, export, compact and the notebook API, and a damaged
    kept space.yaml, were named under the local scratch folder, a path that means nothing on the bucket."""
    import crashsearch as cs
    from crashsearch.flows.cli import main as cli
    from crashsearch.lab.campaign_space import campaign_space
    from crashsearch.lab.space import SpaceError
    from crashsearch.lab.storage import backend_for

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    backend_for(s3_home).put("campaigns/empty/diagnoses.jsonl", b"")  # a home, with no campaign to show
    assert cli(["status", "--home", s3_home]) == 0
    assert capsys.readouterr().out.strip() == f"no campaigns under {s3_home}"
    home, store, _ = _small_history(s3_home, tmp_path, monkeypatch)
    scratch = str(home.root)
    for args in (["analyze", "--campaign", "nope"], ["leaderboard", "--campaign", "nope"],
                 ["export", "--campaign", "nope", "--out", str(tmp_path / "o.parquet")],
                 ["compact", "--campaign", "nope"], ["bugfix", "--list", "--campaign", "nope"]):
        assert cli([*args, "--home", s3_home]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and s3_home in err and scratch not in err, (args, err)
    with pytest.raises(ValueError, match=rf"campaign 'nope' has no experiments under {s3_home} \(campaigns: c1, c2, empty\)"):
        cs.open_home(s3_home).history("nope")

    store.backend.put("campaigns/c1/space.yaml", b"groups: [unclosed")
    with pytest.raises(SpaceError) as caught:
        campaign_space(home, "c1")
    assert str(caught.value).startswith(f"{s3_home}/campaigns/c1/space.yaml: ") and scratch not in str(caught.value)


def test_a_damaged_campaign_json_on_the_bucket_is_kept_in_quarantine_there(s3_home, tmp_path, monkeypatch):
    """Before: the next write_campaign read it as missing and put a new one over it."""
    home, store, _ = _small_history(s3_home, tmp_path, monkeypatch)
    store.backend.put("campaigns/c1/campaign.json", b'{"id": "c1", "stat')
    store.write_campaign("c1", {"status": "running"})
    assert store.backend.read("quarantine/c1/campaign.json") == b'{"id": "c1", "stat'
    assert json.loads(store.backend.read("campaigns/c1/campaign.json"))["status"] == "running"

# ---- the bug-fix log on the bucket: a fix declared on one machine splits the history on every machine -----------
# Before: bugfix_events.jsonl went to the declaring machine's scratch folder (Home.root), so analyze, the store's
# bugfix_events view and `bugfix --list` on any other machine saw no event and reported the full history as the
# post-bugfix scope, silently; lab/catalog.py's view named <url>/bugfix_events.jsonl, where nothing was written.

def _history_around_a_fix(home, campaign: str = "c-fix"):
    """10 rows finished two hours ago, 10 half an hour ago (two arch groups, APs that differ by group);
    returns the time between them (a fix declared --at it splits them 10 / 10)."""
    from datetime import datetime, timedelta, timezone

    from crashsearch.lab.space import Space
    from crashsearch.lab.store import Store
    from crashsearch.tasks.record import Job, make_row

    space = Space.from_dict({"name": "fix", "groups": {
        "arch": {"backbone": ["pixels"], "encoder": ["meanpool_mlp", "gru"], "size": ["small"]},
        "train": {"lr": [0.0001, 0.0003, 0.001, 0.003, 0.01]}}})
    now = datetime.now(timezone.utc)
    rows = []
    for half, finished in enumerate((now - timedelta(hours=2), now - timedelta(minutes=30))):
        for i in range(space.size):
            cell = space.cell(i)
            ap = (0.8 if cell.values["encoder"] == "gru" else 0.6) + 0.01 * i + 0.05 * half
            rows.append(make_row(Job(cell, seed=half), campaign=campaign, dataset="d", space=space,
                                 code_version=f"v{half}", status="ok", metrics={"val_ap": ap},
                                 started_at=finished - timedelta(minutes=1), finished_at=finished + timedelta(seconds=i)))
    Store(home).append(campaign, rows, space)
    return now - timedelta(hours=1)


@pytest.mark.slow
def test_a_bugfix_declared_on_one_machine_splits_the_history_on_another(s3_home, tmp_path, monkeypatch, capsys):
    from crashsearch.flows.analyze import analyze
    from crashsearch.flows.cli import main as cli
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store
    from crashsearch.lab.versions import bugfix_events, post_bugfix

    machine_a = _second_machine(monkeypatch, tmp_path, "scratch-a", s3_home)
    fix_at = _history_around_a_fix(machine_a)
    assert cli(["bugfix", "--home", s3_home, "--note", "focal loss ignored gamma", "--at", fix_at.isoformat()]) == 0
    event_id = capsys.readouterr().out.split("declared bug-fix event ", 1)[1].split(":", 1)[0]
    assert not (machine_a.root / "bugfix_events.jsonl").exists()  # on the bucket, not in this machine's scratch

    machine_b = _second_machine(monkeypatch, tmp_path, "scratch-b", s3_home)
    assert machine_b.root != machine_a.root
    assert cli(["bugfix", "--list", "--home", s3_home]) == 0
    listed = capsys.readouterr().out
    assert event_id in listed and "focal loss ignored gamma" in listed, listed
    assert cli(["query", "SELECT id, note FROM bugfix_events", "--home", s3_home]) == 0
    assert event_id in capsys.readouterr().out
    # the post-bugfix scope, as the analysis computes it: the 10 rows after the fix, not all 20
    events = bugfix_events(machine_b, "c-fix")
    assert [e["id"] for e in events] == [event_id]
    history = Store(machine_b).experiments("c-fix")
    assert len(history) == 20 and len(post_bugfix(history, events)) == 10
    assert cli(["analyze", "--campaign", "c-fix", "--home", s3_home]) == 0
    numbers = json.loads((machine_b.campaign("c-fix") / "report" / "numbers.json").read_text())
    assert numbers["headline"]["bugfix_events"] == [event_id] and numbers["headline"]["n_arch"] == 10
    assert numbers["headline"]["scope"]["eta2_arch"] == "post-bugfix"
    assert numbers["anova"]["post_bugfix"]["arch_group"]["n"] == 10 and numbers["anova"]["full"]["arch_group"]["n"] == 20

    # a client of the catalog (history.duckdb) sees the same event on the bucket
    out = tmp_path / "history.duckdb"
    assert cli(["catalog", "--home", s3_home, "--out", str(out)]) == 0
    con = duckdb.connect(str(out), read_only=True)
    from crashsearch.lab.storage import backend_for

    backend_for(s3_home).attach(con)
    assert con.execute("SELECT id FROM bugfix_events").fetchall() == [(event_id,)]
    con.close()

    # withdrawn on machine B: machine A's analysis no longer splits at it
    capsys.readouterr()
    assert cli(["bugfix", "--home", s3_home, "--remove", event_id, "--note", "wrong time"]) == 0
    assert f"in {s3_home}/bugfix_events.jsonl" in capsys.readouterr().out  # the log's place, not a scratch path
    _second_machine(monkeypatch, tmp_path, "scratch-a", s3_home)
    assert bugfix_events(resolve_home(s3_home), "c-fix") == []
    assert cli(["bugfix", "--list", "--home", s3_home]) == 0
    listed = capsys.readouterr().out
    assert f"{event_id}  removed" in listed and "wrong time" in listed, listed
    numbers = analyze("c-fix", machine_a)["numbers"]  # the analyze flow's work, without Prefect
    assert numbers["headline"]["bugfix_events"] == [] and numbers["anova"]["post_bugfix"] is None
    assert numbers["headline"]["scope"]["eta2_arch"] == "full history" and numbers["headline"]["n_arch"] == 20


DECLARER = """
import sys
import time
from pathlib import Path
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.versions import declare_bugfix

url, name, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
home = resolve_home(url)
ready.touch()
while not go.exists():  # both machines start declaring together
    time.sleep(0.002)
for i in range(12):
    declare_bugfix(home, f"{name} fix {i}", version="v1")
"""


def test_two_machines_declaring_bug_fixes_at_once_on_an_s3_home_lose_none(s3_home, tmp_path, monkeypatch):
    """Two processes, each its own scratch folder (two machines), append to the bucket's log at once."""
    import os

    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.storage import backend_for
    from crashsearch.lab.versions import bugfix_events

    backend_for(s3_home).put("campaigns/c/campaign.json", b"{}")
    go = tmp_path / "go"
    procs = []
    for name in ("a", "b"):
        env = {**os.environ, "CRASHSEARCH_SCRATCH": str(tmp_path / f"scratch-{name}")}
        procs.append(subprocess.Popen([sys.executable, "-c", DECLARER, s3_home, name, str(tmp_path / f"ready-{name}"),
                                       str(go)], env=env, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"ready-{n}").exists() for n in "ab") and time.time() < deadline:
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
            time.sleep(0.05)
        go.touch()
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch-c"))  # a third machine reads them
    notes = [e["note"] for e in bugfix_events(resolve_home(s3_home))]
    assert sorted(notes) == sorted(f"{n} fix {i}" for n in "ab" for i in range(12))
    lines = backend_for(s3_home).read("bugfix_events.jsonl").decode().split("\n")
    assert len(lines) == 25 and lines[-1] == "" and all(json.loads(line) for line in lines[:-1])


def test_a_bugfix_log_an_older_version_left_in_the_scratch_folder_is_named_not_silently_dropped(s3_home, tmp_path,
                                                                                               monkeypatch, caplog):
    import logging

    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.versions import bugfix_events, declare_bugfix

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    home = resolve_home(s3_home)
    (home.root / "bugfix_events.jsonl").write_text('{"id": "old", "note": "x", "declared_at": "2026-01-01T00:00:00Z"}\n')
    event = declare_bugfix(home, "on the bucket")
    with caplog.at_level(logging.WARNING):
        assert [e["id"] for e in bugfix_events(home)] == [event["id"]]
    said = [r.getMessage() for r in caplog.records if "bugfix_events.jsonl" in r.getMessage()]
    assert len(said) == 1 and str(home.root / "bugfix_events.jsonl") in said[0], said
    assert f"the home's log is {s3_home}/bugfix_events.jsonl" in said[0] and "declare its events again" in said[0]


# ---- DuckDB reads the log's local copies ---------------------------------------------------------------
def _history(store, space, rows: int, appends: int) -> None:
    """``rows`` synthetic experiments compacted into one object, then ``appends`` parts of 10 rows."""
    import numpy as np

    from benchmarks.store import synthetic_table

    rng = np.random.default_rng(0)
    for offset in range(0, rows, rows // 2):
        store.append_table("c1", synthetic_table(space, rows // 2, offset, rng, "c1"), space)
    store.compact("c1")
    for i in range(appends):
        store.append("c1", [{"experiment_id": f"live-{i}-{j}", "cell_id": (i * 10 + j) % 500, "status": "ok",
                             "val_ap": 0.5} for j in range(10)], space)


def test_the_views_read_the_logs_local_copies_and_the_sandbox_holds_nothing_of_another_home(s3_home, s3_server, space):
    """DuckDB read the log parts by their s3:// URLs through the registered s3fs filesystem, and a query
    over many parts now and then failed on wrong bytes ("don't know what type:", "Payload value bigger
    than allowed"; 1 to 8 leaderboards in 30 of benchmarks/s3_store.py's history)."""
    import duckdb

    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store

    store = Store(resolve_home(s3_home))
    _history(store, space, rows=200, appends=3)
    con = store.connect()
    view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'experiments'").fetchone()[0]
    assert "s3://" not in view and str(store.backend.cache.folder) in view
    assert con.execute("SELECT count(*) FROM experiments").fetchone() == (230,)
    other = Store(resolve_home(f"s3://{s3_server.make_bucket()}/home"))  # another home on this machine
    _history(other, space, rows=20, appends=0)
    copy = other.backend.local_path(other.log_keys("c1")[0])
    with pytest.raises(duckdb.Error):  # its copies are outside this home's sandbox
        con.execute(f"SELECT count(*) FROM read_parquet('{copy}')").fetchall()


@pytest.mark.slow
def test_leaderboards_over_a_large_s3_history_all_read_right(s3_home, space):
    """The symptom, at scale: 30 leaderboards over a compacted history and 40 small parts. Reading
    through s3fs failed 1 to 8 times in 30 on benchmarks/s3_store.py's 100,000 rows, and less often
    here; the test above pins the cause."""
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store

    store = Store(resolve_home(s3_home))
    _history(store, space, rows=40_000, appends=40)
    for _ in range(30):
        assert len(store.leaderboard(k=10)) == 10
    assert store.query("SELECT count(*) AS n FROM experiments")["n"][0] == 40_400


def test_a_copy_damaged_on_this_disk_is_fetched_again_not_taken_for_damage_on_the_bucket(s3_home, space, capsys):
    """The views left a sound part out as damaged when its local copy was, and `check --repair` then
    quarantined the object on the bucket from the damaged copy's bytes and deleted the original."""
    from pathlib import Path

    from crashsearch.flows.cli import main as cli
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.store import Store

    store = Store(resolve_home(s3_home))
    _history(store, space, rows=100, appends=2)
    keys = store.log_keys("c1")
    sound = {k: store.backend.read(k) for k in keys}
    for key in keys:  # this disk's copies go bad (a full disk's torn write, a stray edit)
        Path(store.backend.local_path(key)).write_bytes(b"garbage")
    assert len(store.experiments("c1")) == 120  # fetched again, nothing left out
    for key in keys:
        Path(store.backend.local_path(key)).write_bytes(b"garbage")
    assert cli(["check", "--home", s3_home, "--repair"]) == 0
    assert "no damage" in capsys.readouterr().out
    assert {k: store.backend.read(k) for k in store.log_keys("c1")} == sound  # the bucket untouched
    assert not store.backend.list("quarantine/")
