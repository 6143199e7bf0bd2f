"""Ray closed to the network and never outliving `peftbench run` (issue 11 §3-4): listeners on
loopback only, Ctrl-C exits 130 with the trial KILLED, kill -9 of the driver leaves no Ray process
and the next run marks the orphaned run KILLED."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftbench import run_state
from peftbench.owner import Owner
from peftbench.ray_reaper import descendants
from tests.reliability_suite import runs, write_suite

pytestmark = pytest.mark.slow


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} addresses: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listeners(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every listening TCP socket of these processes."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening[fields[9]] = _address(fields[1].split(":")[0])
    found = []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        found += [(pid, str(listening[link[8:-1]])) for link in links
                  if link.startswith("socket:[") and link[8:-1] in listening]
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def _start_long_run(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """`peftbench run` (Ray) of one long trial, in its own process group (as a terminal's job);
    returns once the trial's first epoch is reported, i.e. its MLflow run is open."""
    suite = write_suite(tmp_path, train={"epochs": 500})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", "run", str(suite), "--tracking-uri", uri],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_signals)
    for line in proc.stdout:
        if line.startswith("  epoch 1 "):
            return proc, uri
    raise AssertionError(f"the run ended before its first epoch (exit {proc.wait()})")


def _default_signals() -> None:
    """A shell without job control starts background jobs (`cmd &`, CI runners, nohup) with SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler: a terminal's driver has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def cleanup():
    """Whatever an assertion leaves running: the driver's kill -9 takes its cluster down."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_gone(processes: list[Owner], limit_s: float = 60.0) -> list[Owner]:
    deadline = time.monotonic() + limit_s
    while (alive := [p for p in processes if p.is_alive()]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def test_kill_9_of_the_driver_leaves_no_ray_process_and_no_zombie_run(tmp_path, cleanup):
    proc, uri = _start_long_run(tmp_path)
    cleanup.append(proc)
    ray = descendants(proc.pid)
    commands = [Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in ray]
    assert any(b"raylet" in c for c in commands) and any(b"peftbench.ray_reaper" in c for c in commands)
    sockets = listeners({proc.pid} | {p.pid for p in ray})
    assert sockets, "no Ray listener found"
    assert all(_is_loopback(address) for _, address in sockets), sockets  # nothing reachable from outside

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_gone(ray) == []  # the watchdog took the cluster down with the driver
    assert [r.info.status for r in runs(uri)] == ["RUNNING"]
    assert run_state.close_orphans(uri, "faults") == ["linear/synthetic-target/full/s0"]  # what the next run does
    [run] = runs(uri)
    assert run.info.status == "KILLED" and "was gone" in run.data.tags[run_state.NOTE_TAG]
    assert not list((tmp_path / ".cache/peftbench/ray/clusters").glob("*.json"))


def test_ctrl_c_exits_130_with_the_trial_killed_and_ray_gone(tmp_path, cleanup):
    proc, uri = _start_long_run(tmp_path)
    cleanup.append(proc)
    ray = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "interrupted: 0 finished, 1 killed, 0 not started" in out
    assert [r.info.status for r in runs(uri)] == ["KILLED"]
    assert _wait_gone(ray) == []


def test_sigterm_of_the_driver_ends_the_run_as_ctrl_c_does(tmp_path, cleanup):
    """`kill PID` (or a scheduler's SIGTERM) hit Ray's fatal-signal handler: abort, exit 134, run left RUNNING."""
    proc, uri = _start_long_run(tmp_path)
    cleanup.append(proc)
    ray = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)  # the driver only, as `kill PID` does
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "interrupted: 0 finished, 1 killed, 0 not started" in out
    [run] = runs(uri)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags[run_state.NOTE_TAG]
    assert _wait_gone(ray) == []
