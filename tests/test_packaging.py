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


def _package_folders() -> set[str]:
    """Every folder of the checkout that installs as a package: those with an __init__.py, and
    those holding package data (lab/spaces). tests/ and benchmarks/ are not installed."""
    found = {"crashsearch"}
    for init in REPO.rglob("__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts and rel.parts[0] not in ("tests", "benchmarks", "build", ".venv") and not any(
                p.startswith(".") or p.endswith(".egg-info") for p in rel.parts):
            found.add(".".join(("crashsearch",) + rel.parts))
    return found | {"crashsearch.lab.spaces"}


def test_pyproject_lists_every_package_of_the_tree():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == _package_folders(), f"missing: {sorted(_package_folders() - listed)}, extra: {sorted(listed - _package_folders())}"


@pytest.mark.slow
def test_every_module_of_the_installed_wheel_imports_and_the_cli_runs(wheel, tmp_path):
    """A fresh venv with the wheel installed by pip and the project's dependencies visible (a .pth
    line naming this interpreter's site-packages; .pth files inside it, such as an editable
    install's finder, are not run from there): every module imports and `crashsearch --help` runs."""
    import site
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "absent from the packages configuration" not in out.stdout + out.stderr
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    Path(purelib, "project-deps.pth").write_text("\n".join(deps) + "\n")
    modules = sorted(".".join(("crashsearch",) + p.relative_to(REPO).with_suffix("").parts)
                     for p in REPO.rglob("*.py")
                     if p.parts[len(REPO.parts)] not in ("tests", "benchmarks", "build", ".venv")
                     and p.name not in ("__init__.py", "__main__.py") and p.parent != REPO)
    check = f"""
import importlib, crashsearch
assert crashsearch.__file__.startswith({str(venv)!r}), crashsearch.__file__
for name in {modules!r}:
    mod = importlib.import_module(name)
    assert mod.__file__.startswith({str(venv)!r}), mod.__file__
print('imported', len({modules!r}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    out = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == f"imported {len(modules)}"
    out = subprocess.run([str(venv / "bin" / "crashsearch"), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0 and "campaign" in out.stdout, out.stdout + out.stderr
