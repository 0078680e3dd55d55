"""The wheel installs one top-level name, ``crashsearch``: no generic ``models``/``lab``/``flows`` (docs/packaging.md)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GENERIC = ("models", "tasks", "flows", "lab", "agents", "analysis")


def _source_copy(dest: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files, copied (the build writes build/
    and *.egg-info beside the sources: not into the checkout that other tests run from)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=False)
    if listed.returncode != 0:  # not a git checkout (an sdist): copy the tree
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "*.egg-info"))
        return dest
    for name in filter(None, listed.stdout.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (path,) = (tmp / "dist").glob("crashsearch-*.whl")
    return path


def test_the_wheel_holds_only_the_crashsearch_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    dist_info = [t for t in tops if t.endswith(".dist-info")]
    assert tops - set(dist_info) == {"crashsearch"} and len(dist_info) == 1, sorted(tops)
    for sub in GENERIC:
        assert f"crashsearch/{sub}/__init__.py" in names
    assert "crashsearch/lab/spaces/collision.yaml" in names or any(n.startswith("crashsearch/lab/spaces/") for n in names)
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)


@pytest.mark.slow
def test_in_a_fresh_venv_generic_names_do_not_import_and_crashsearch_does(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # the project's pip installs into the fresh venv; --no-deps: the checks below need no third-party package
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    check = f"""
import importlib, sys
for name in {GENERIC!r}:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"{{name}} imports in the fresh venv")
import crashsearch
assert crashsearch.__file__.startswith({str(venv)!r}), crashsearch.__file__
import crashsearch.lab.settings  # a stdlib-only module imports without dependencies
from importlib.resources import files
assert any(p.name.endswith('.yaml') for p in files('crashsearch.lab').joinpath('spaces').iterdir())
print('ok', crashsearch.__version__)
"""
    # run outside the checkout: the current folder is on sys.path and holds lab/, models/ ...
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    out = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "ok 0.1.0"
    assert (venv / "bin" / "crashsearch").exists()  # the console script is installed
