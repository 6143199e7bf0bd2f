"""The wheel works outside the checkout: built from a copy of the sources, installed (no deps, no
index) into a fresh venv that sees this environment's dependencies but neither the repo nor its
editable install, then used from an empty folder -- methods, params, suites and a one-trial suite
with a plugin method from the user's own folder."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

from conftest import MICRO

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("pyproject.toml", "README.md", "peftbench", "methods", "suites")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _dependency_dirs() -> list[str]:
    """This interpreter's site-packages (where torch, ray, mlflow live), never the checkout. Listed
    as plain paths in a .pth, so their own .pth files -- an editable peftbench -- are not run."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir() and Path(d).resolve() != REPO))


def build_wheel(tmp: Path) -> Path:
    source = tmp / "src"
    source.mkdir()
    for name in SHIPPED:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    for cache in source.rglob("__pycache__"):
        shutil.rmtree(cache)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp / "dist"), str(source)], tmp, dict(os.environ))
    (wheel,) = (tmp / "dist").glob("peftbench-*.whl")
    return wheel


def fresh_venv(tmp: Path, wheel: Path) -> tuple[Path, dict[str, str]]:
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                   {"PATH": os.environ["PATH"]}).strip()
    Path(purelib, "_peftbench_test_deps.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(tmp / "hf"), "PYTHONNOUSERSITE": "1"}
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp, env)
    return env_dir, env


def one_trial_suite(folder: Path) -> Path:
    """A user's folder: a plugin (the README's example method) and a one-trial suite using it."""
    section = (REPO / "README.md").read_text().split("## Adding a method", 1)[1]
    (folder / "plugins").mkdir()
    (folder / "plugins" / "adaptformer.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    suite = {
        "name": "wheel", "methods_dir": ["plugins"],
        "backbone": {"config": "tiny", "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in MICRO.items()}},
        "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt", "scenes": {"train": 2, "val": 1},
                      "points_per_m2": 15}],
        "methods": [{"name": "adaptformer", "settings": {"bottleneck": 4}}],
        "seeds": [0],
        "train": {"epochs": 1, "batch_size": 2, "grid_size": 0.1},
    }
    path = folder / "one.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.slow
def test_wheel_works_from_an_empty_folder(tmp_path):
    wheel = build_wheel(tmp_path)
    env_dir, env = fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"
    work.mkdir()
    exe = str(env_dir / "bin" / "peftbench")

    # Each command starts a Python that imports torch: few of them keep the test near a minute.
    doctor = _run([exe, "doctor"], work, env)
    where = re.search(r"peftbench +\S+ \((.+)\)", doctor).group(1)
    assert Path(where).is_relative_to(env_dir), where  # the wheel, not the checkout
    methods = _run([exe, "methods"], work, env)
    assert {"linear", "gem", "lora", "full"} <= {line.split()[0] for line in methods.splitlines() if line[:1].strip()}
    params = _run([exe, "params", "--backbone", "tiny"], work, env)
    assert "gem" in params and "linear" in params
    assert "16 trials" in _run([exe, "run", "demo", "--dry-run"], work, env)  # the shipped suite

    one_trial_suite(work)
    out = _run([exe, "run", "one.yaml", "--sequential"], work, env, timeout=600)
    assert re.search(r"\[1/1\] adaptformer/synthetic-target/full/s0: test mIoU \d\.\d{3}", out), out
    assert "0 failed" in out and (work / "mlflow.db").is_file() and (work / "data" / "tgt").is_dir()
    assert not (work / "methods").exists() and not (work / "suites").exists()
