"""MLflow stays true after every kind of stop (issue 11 §3): Ctrl-C, a dead owner, errors while a
run is being opened, --rerun twins, a corrupt or unwritable store, two runs at once."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from peftbench import run_state, tracking
from peftbench.cli import main
from peftbench.owner import Owner, this_process
from peftbench.store_lock import file_lock
from tests.reliability_suite import runs, write_suite


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path}/mlflow.db"


def _open_run(uri: str, name: str, owner: str | None = None, fingerprint: str = "fp") -> str:
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(uri, "faults")
    tags = {"peftbench.fingerprint": fingerprint, **({tracking.OWNER_TAG: owner} if owner else {})}
    return c.create_run(exp, tags=tags, run_name=name).info.run_id


def _dead_owner() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return Owner(this_process().host, child.pid, "1").token


def test_runs_whose_owner_is_gone_are_killed_with_a_note_and_live_ones_kept(store):
    dead = _open_run(store, "dead", _dead_owner())
    unowned = _open_run(store, "unowned")  # written before owners were recorded
    live = _open_run(store, "live", this_process().token)
    assert sorted(run_state.close_orphans(store, "faults")) == ["dead", "unowned"]
    c = tracking.client(store)
    assert c.get_run(dead).info.status == "KILLED" and c.get_run(unowned).info.status == "KILLED"
    assert "was gone; marked KILLED by peftbench run" in c.get_run(dead).data.tags[run_state.NOTE_TAG]
    assert c.get_run(live).info.status == "RUNNING"
    c.set_terminated(live, "KILLED")  # its owner (this test) ends here: leave no RUNNING run behind


def test_one_finished_run_per_fingerprint(store):
    c = tracking.client(store)
    ids = [_open_run(store, f"r{i}", fingerprint="same") for i in range(3)] + [_open_run(store, "x", fingerprint="x")]
    for run_id in ids:
        c.set_terminated(run_id, "FINISHED")
    assert run_state.remove_duplicate_finished(store, "faults") == ids[:2]
    assert sorted(r.info.run_id for r in runs(store)) == sorted(ids[2:])


def test_an_error_while_opening_the_run_closes_it_failed(store, monkeypatch):
    from mlflow.tracking import MlflowClient

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MlflowClient, "log_batch", disk_full)
    with pytest.raises(OSError, match="No space left"):
        with tracking.TrialRun(store, "faults", "t", {"peftbench.fingerprint": "fp"}, {"a": 1}):
            pass
    [run] = runs(store)
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["peftbench.error"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_trial_is_killed_not_failed(store, stop):
    with pytest.raises(stop):
        with tracking.TrialRun(store, "faults", "t", {}, {}):
            raise stop()
    assert [r.info.status for r in runs(store)] == ["KILLED"]


def test_ctrl_c_exits_130_and_says_what_finished_was_killed_and_did_not_start(store, tmp_path, monkeypatch, capsys):
    calls = []

    def trial(spec, recorder, report=None, progress=None, **resume):  # the first finishes, Ctrl-C in the second
        calls.append(spec["run_name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        recorder.log_metrics({"test/mIoU": 0.5})
        return {"test/mIoU": 0.5}

    monkeypatch.setattr("peftbench.tune_trial.run_trial", trial)
    suite = write_suite(tmp_path, methods=["linear", "bitfit", "gem"])
    assert main(["run", str(suite), "--sequential", "--tracking-uri", store]) == 130
    assert "interrupted: 1 finished, 1 killed, 1 not started" in capsys.readouterr().err
    assert sorted(r.info.status for r in runs(store)) == ["FINISHED", "KILLED"]


def _mlflow_error_while_interrupted() -> Exception:
    """What MLflow raises when a Ctrl-C lands inside its database session (seen in a full test run:
    sqlite "database is locked" or SQLAlchemy's "not on the active transaction list")."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
    except MlflowException as err:
        return err


def test_an_mlflow_error_raised_by_a_ctrl_c_ends_the_suite_interrupted_not_failed(store, tmp_path, monkeypatch,
                                                                                    capsys):
    def trial(spec, recorder, report=None, progress=None, **resume):
        raise _mlflow_error_while_interrupted()

    monkeypatch.setattr("peftbench.tune_trial.run_trial", trial)
    suite = write_suite(tmp_path, methods=["linear", "gem"])
    assert main(["run", str(suite), "--sequential", "--tracking-uri", store]) == 130
    err = capsys.readouterr().err
    assert "interrupted: 0 finished, 1 killed, 1 not started" in err and "FAILED" not in err
    assert [r.info.status for r in runs(store)] == ["KILLED"]


def test_an_mlflow_error_raised_by_a_ctrl_c_in_the_driver_closes_the_session_as_interrupted(store, tmp_path,
                                                                                          monkeypatch, capsys):
    def finished(*args, **kwargs):  # the driver's own MLflow query, interrupted
        raise _mlflow_error_while_interrupted()

    monkeypatch.setattr(tracking, "finished_fingerprints", finished)
    suite = write_suite(tmp_path, methods=["linear", "gem"])
    assert main(["run", str(suite), "--sequential", "--tracking-uri", store]) == 130
    assert capsys.readouterr().err == "peftbench: interrupted; rerun the same command to run what is left\n"
    assert runs(store) == []


def test_a_store_that_cannot_be_written_after_ctrl_c_does_not_replace_the_interrupt(store, monkeypatch):
    """The run stays RUNNING, owned by this process: the driver or the next run marks it KILLED."""
    from mlflow.tracking import MlflowClient

    def locked(*args, **kwargs):
        raise _mlflow_error_while_interrupted()

    with pytest.raises(KeyboardInterrupt):
        with tracking.TrialRun(store, "faults", "t", {}, {}):
            monkeypatch.setattr(MlflowClient, "set_terminated", locked)
            raise KeyboardInterrupt
    monkeypatch.undo()
    assert [r.info.status for r in runs(store)] == ["RUNNING"]


def test_ctrl_c_inside_mlflow_during_any_command_exits_130_without_a_traceback(store, monkeypatch, capsys):
    def report(*args, **kwargs):
        raise _mlflow_error_while_interrupted()

    monkeypatch.setattr("peftbench.report.write_report", report)
    assert main(["report", "faults", "--tracking-uri", store]) == 130
    assert capsys.readouterr().err == "peftbench: interrupted\n"


def test_raised_by_interrupt_follows_the_context_chain():
    from peftbench.interrupt import raised_by_interrupt

    assert raised_by_interrupt(_mlflow_error_while_interrupted())
    assert raised_by_interrupt(SystemExit())
    plain = ValueError("x")
    plain.__context__ = OSError("y")
    assert not raised_by_interrupt(plain) and not raised_by_interrupt(None)


def test_corrupt_store_is_one_line_naming_the_file(store, tmp_path, capsys):
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database" * 100)
    suite = write_suite(tmp_path)
    for argv in (["run", str(suite), "--sequential"], ["report", "faults"]):
        assert main([*argv, "--tracking-uri", store]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{tmp_path}/mlflow.db is not a readable MLflow database" in err
        assert "move it aside" in err


def test_unwritable_tracking_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite = write_suite(tmp_path)
    assert main(["run", str(suite), "--sequential", "--tracking-uri", "sqlite:////proc/peftbench/mlflow.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot create the tracking folder /proc/peftbench" in err


def test_experiment_lock_makes_the_second_run_wait(tmp_path):
    lock, released = tmp_path / "experiment.lock", tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib\nfrom peftbench.store_lock import file_lock\n"
         f"with file_lock(pathlib.Path({str(lock)!r}), 'x'):\n"
         f"    print('held', flush=True); sys.stdin.readline(); pathlib.Path({str(released)!r}).touch()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said: list[str] = []
    threading.Timer(1.0, holder.stdin.close).start()
    with file_lock(lock, "experiment 'x'", said.append, poll_s=0.05):
        assert released.exists()  # got the lock only once the holder was letting go
    holder.wait()
    assert said[0].startswith(f"waiting: experiment 'x' is held by peftbench run pid {holder.pid}")
    assert said[-1].startswith("experiment 'x' is free after")


@pytest.mark.slow
def test_two_runs_at_once_on_a_fresh_store_run_each_trial_once(tmp_path):
    suite = write_suite(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [sys.executable, "-m", "peftbench.cli", "run", str(suite), "--sequential", "--tracking-uri", uri]
    procs = [subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [r.info.status for r in runs(uri)] == ["FINISHED"]
    assert sum("1 of 1 trials already FINISHED in MLflow, skipped" in out for out in outs) == 1, outs
    assert sum("waiting: experiment 'faults' is held by" in out for out in outs) == 1, outs


def test_ctrl_c_exits_even_with_a_worker_thread_left_alive(tmp_path):
    """After an interrupt everything is recorded, so the command leaves at once: a library's
    non-daemon thread still running (here one sleeping for 10 minutes) must not hold the exit.
    Once in a full test run the Ray driver printed its interrupted line and was alive 2 min later."""
    import os
    import signal

    suite = write_suite(tmp_path, train={"epochs": 500})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = ("import threading, time; threading.Thread(target=time.sleep, args=(600,)).start(); "
            "from peftbench.cli import console_main; console_main()")
    proc = subprocess.Popen([sys.executable, "-c", code, "run", str(suite), "--sequential", "--tracking-uri", uri],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if line.strip().startswith("epoch 1/"):  # the trial's run is open
                break
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert [r.info.status for r in runs(uri)] == ["KILLED"]
