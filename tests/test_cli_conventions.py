"""Conventional touches: --version, python -m peftbench, exit codes in --help, an example for every
flag of `run`, and `peftbench doctor` saying what a bug report needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import peftbench
from peftbench.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"peftbench {peftbench.__version__}"


def test_python_dash_m_is_the_command(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "peftbench", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for code in ("0 ", "1 ", "2 ", "130"):
        assert f"\n  {code}" in out.stdout
    assert "interrupted" in out.stdout and "doctor" in out.stdout and "suites" in out.stdout


def test_run_help_has_an_example_for_every_flag():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    examples = run.epilog.split("examples:", 1)[1].split("exit status:", 1)[0]
    flags = [opt for action in run._actions for opt in action.option_strings
             if opt.startswith("--") and opt != "--help"]
    assert {"--dry-run", "--sequential", "--rerun", "--tracking-uri", "--methods-dir", "--quiet", "--debug"} <= set(flags)
    for flag in flags:
        assert flag in examples, flag
    assert "130" in run.epilog


def test_global_flags_work_before_and_after_the_subcommand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    assert parser.parse_args(["--quiet", "run", "demo"]).quiet
    assert parser.parse_args(["run", "demo", "--quiet"]).quiet
    assert not parser.parse_args(["run", "demo"]).quiet
    assert parser.parse_args(["--debug", "methods"]).debug


def test_doctor_reports_versions_backends_and_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    import torch

    for section in ("versions:", "devices:", "backends:", "storage:"):
        assert section in out
    for name in ("torch", "ray", "mlflow", "spconv", "huggingface_hub"):
        assert f"\n  {name} " in out
    assert torch.__version__ in out
    sparse = next(line for line in out.splitlines() if "sparse conv" in line)
    attention = next(line for line in out.splitlines() if line.strip().startswith("attention"))
    assert ("spconv:" in sparse) if torch.cuda.is_available() else ("torch: no GPU" in sparse)
    assert "scaled_dot_product_attention" in attention
    norm = next(line for line in out.splitlines() if line.strip().startswith("layer norm"))
    assert ("Triton kernels for rows of at most" in norm) if torch.cuda.is_available() else ("CUDA only" in norm)
    latent = next(line for line in out.splitlines() if line.strip().startswith("GEM context adapter"))
    wanted = "Triton kernels up to 128 latents a scene" if torch.cuda.is_available() else "CUDA only"
    assert wanted in latent
    assert f"sqlite:///{tmp_path.resolve()}/mlflow.db" in out
    assert str(tmp_path / "hf") in out and "not cached" in out


@pytest.mark.parametrize("command", [["methods"], ["--help"]])  # an error in a command; in argparse
def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path, command):
    # `peftbench methods | head -1`: the reader closes the pipe before the output ends. Its read
    # end is closed here before the command starts, so every write meets EPIPE (no race).
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    try:
        out = subprocess.run([sys.executable, "-m", "peftbench", *command], cwd=tmp_path, env=env,
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert out.stderr == "" and out.returncode == 141, (out.returncode, out.stderr)


def test_head_reads_one_line_without_a_traceback(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(f"'{sys.executable}' -m peftbench methods | head -1", shell=True, cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1 and "Traceback" not in out.stderr
