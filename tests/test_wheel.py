"""The installable package (#18): `python -m build` makes a wheel and an sdist that install into a fresh
virtual environment, where `nanoft --version`, `nanoft info` and `import nanoft` (with the four mapped folders
and every subpackage) work from the installed files alone, and `py.typed` is shipped.

Nothing is downloaded: the build uses this environment's setuptools (--no-isolation), the installs use
--no-deps --no-index, and the fresh environment sees this one's site-packages (torch, tokenizers, the MiniLM
checkpoint package) through a path file, after its own, without this one's editable nanoft.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("build")

REPO = Path(__file__).resolve().parents[1]
PARTS = ("weights", "tasks", "kernels", "bench")
SKIP = {".git", ".venv", "build", "dist", "runs", "__pycache__", ".cache", ".pytest_cache"}


def subpackages() -> list:
    """Every package folder of the source tree, as the import name it must have once installed."""
    names = []
    for root, prefix in [(REPO / "nanoft", "nanoft")] + [(REPO / p, f"nanoft.{p}") for p in PARTS]:
        for init in sorted(root.rglob("__init__.py")):
            rel = init.parent.relative_to(root).parts
            names.append(".".join((prefix, *rel)))
    return names


def run(cmd, cwd, env=None, timeout=600):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The wheel and sdist, built from a copy of the tree (a build writes build/ and *.egg-info beside setup.py)."""
    src = tmp_path_factory.mktemp("src") / "nanoft"
    shutil.copytree(REPO, src, ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], cwd=src)
    wheels, sdists = sorted(out.glob("nanoft-*.whl")), sorted(out.glob("nanoft-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    return wheels[0], sdists[0]


def fresh_venv(path: Path) -> Path:
    """A new venv whose interpreter also sees this environment's packages, after its own; returns its bin/."""
    run([sys.executable, "-m", "venv", path], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path).strip()
    # a plain path line: the folder joins sys.path, but its .pth files (this env's editable nanoft) are not run
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    Path(purelib, "zz_parent_env.pth").write_text("".join(f"{p}\n" for p in sorted(ours)), encoding="utf-8")
    return path / "bin"


def check_installed(bin_dir: Path, cwd: Path, env_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    version = run([bin_dir / "nanoft", "--version"], cwd=cwd, env=env)
    assert "0.1.0" in version
    info = run([bin_dir / "nanoft", "info"], cwd=cwd, env=env)
    assert "family:     bert" in info and "parameters:" in info and "tokenizer:" in info
    names = subpackages()
    probe = ("import importlib, nanoft, sys\n"
             f"mods = [importlib.import_module(n) for n in {names!r}]\n"
             "print('\\n'.join(m.__file__ for m in mods))\n"
             "from importlib.resources import files\n"
             "print('typed', files('nanoft').joinpath('py.typed').is_file())\n")
    out = run([bin_dir / "python", "-c", probe], cwd=cwd, env=env).splitlines()
    files, typed = out[:-1], out[-1]
    assert len(files) == len(names) and typed == "typed True"
    for name, file in zip(names, files):  # every module comes from the installed copy, none from the repository
        assert Path(file).resolve().is_relative_to(env_root.resolve()), (name, file)


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(dist, tmp_path):
    wheel, _ = dist
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "nanoft/py.typed" in names
    for package in subpackages():
        assert package.replace(".", "/") + "/__init__.py" in names, package
    bin_dir = fresh_venv(tmp_path / "venv")
    run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp_path)
    check_installed(bin_dir, tmp_path, tmp_path / "venv")


@pytest.mark.slow
def test_sdist_installs_and_runs_in_a_fresh_venv(dist, tmp_path):
    """pip builds the sdist on its own (this environment's setuptools: a fresh venv's may lack bdist_wheel) and
    the result installs and runs like the wheel."""
    _, sdist = dist
    built = tmp_path / "built"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-q", "-w", built,
         sdist], cwd=tmp_path)
    (wheel,) = built.glob("nanoft-*.whl")
    bin_dir = fresh_venv(tmp_path / "venv")
    run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp_path)
    check_installed(bin_dir, tmp_path, tmp_path / "venv")
