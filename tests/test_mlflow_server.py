"""A suite tracked through a real ``mlflow server`` (artifacts through its proxy), then reported from it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from peftbench.cli import main
from tests.conftest import MICRO

SUITE = {
    "name": "served",
    "backbone": {"config": "tiny", "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in MICRO.items()}},
    "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt", "scenes": {"train": 2, "val": 1},
                  "points_per_m2": 15}],
    "methods": ["linear", {"name": "gem", "settings": {"rank": 2}}],
    "seeds": [0],
    "train": {"epochs": 2, "batch_size": 2, "grid_size": 0.1},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with an sqlite backend and a proxied artifact store; its URL."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "server.log", "wb")
    # setsid: the server is ~9 processes (uvicorn workers, job runner); stop the whole group.
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "served-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_suite_through_mlflow_server_then_report(mlflow_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "served.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    # Ray trials log from their worker processes over HTTP.
    assert main(["run", str(suite), "--tracking-uri", mlflow_server]) == 0

    from peftbench import tracking

    client = tracking.client(mlflow_server)
    exp = client.get_experiment_by_name("served")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # through the server's proxy
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["peftbench.method"] for r in runs) == ["gem", "linear"]
    assert all(r.info.status == "FINISHED" for r in runs)
    gem = next(r for r in runs if r.data.tags["peftbench.method"] == "gem")
    assert {"config.json", "method_weights.pt"} <= {a.path for a in client.list_artifacts(gem.info.run_id)}
    # The bytes landed in the server's artifact destination, not in this working directory.
    assert list((tmp_path / "served-artifacts").rglob("method_weights.pt"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()

    capsys.readouterr()
    assert main(["run", str(suite), "--tracking-uri", mlflow_server, "--sequential"]) == 0
    assert "2 of 2 trials already FINISHED" in capsys.readouterr().out

    assert main(["report", "served", "--tracking-uri", mlflow_server]) == 0
    summary = (tmp_path / "reports" / "served" / "summary.md").read_text()
    assert "| gem |" in summary and "| linear |" in summary
