"""Progress: plain lines without a terminal (CI logs), bars on one, an ETA from measured trial
durations, --quiet keeping only results, and the trainer / voting / generator reporting steps."""

from __future__ import annotations

import io

import pytest

from peftbench.progress import Console, SuiteProgress, TaskProgress, report_progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_the_suite_prints_plain_lines_with_counts_and_eta():
    out, clock = io.StringIO(), Clock()
    console = Console(out)
    assert not console.bars
    bar = SuiteProgress(4, console, clock)
    bar.started("linear/s0")
    bar.started("gem/s0")
    clock.now = 60.0
    bar.finished_trial("linear/s0", 0.5712)
    clock.now = 90.0
    bar.finished_trial("gem/s0", error="RuntimeError: boom")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert "started  linear/s0" in lines[0]
    done = next(line for line in lines if line.startswith("[1/4]"))
    # one trial took 60 s; two are waiting, two ran side by side: (2 x 60) / 2 = 60 s left
    assert "linear/s0: test mIoU 0.571 in 01:00" in done and "1 done, 1 running, 0 failed" in done
    assert "ETA 01:00" in done
    failed = next(line for line in lines if line.startswith("[2/4]"))
    assert "gem/s0: FAILED: RuntimeError: boom" in failed and "1 failed" in failed


def test_eta_is_unknown_until_a_trial_finished_and_counts_running_time():
    clock = Clock()
    bar = SuiteProgress(3, Console(io.StringIO()), clock)
    bar.started("a")
    assert bar.eta_seconds() is None and "ETA ?" in bar.status()
    clock.now = 100.0
    bar.finished_trial("a", 0.4)
    bar.started("b")
    clock.now = 130.0
    assert bar.eta_seconds() == pytest.approx(70.0 + 100.0)  # b needs ~70 s more, c ~100 s


def test_quiet_keeps_the_result_lines_only():
    out = io.StringIO()
    console = Console(out, quiet=True)
    bar = SuiteProgress(1, console, Clock())
    bar.started("linear/s0")
    bar.epoch("linear/s0", 1, {"train/loss": 1.0})
    steps = TaskProgress(console)
    steps("epoch 1/1: train/loss 1")
    report_progress(steps, "voting test (scenes)", 1, 1)
    bar.finished_trial("linear/s0", 0.5)
    assert out.getvalue().splitlines() == [line for line in out.getvalue().splitlines() if line.startswith("[1/1]")]
    assert "test mIoU 0.500" in out.getvalue()


def test_task_lines_every_tenth_and_epoch_lines_carry_an_eta():
    out = io.StringIO()
    steps = TaskProgress(Console(out), prefix="    ")
    for i in range(1, 21):
        report_progress(steps, "voting test (scenes)", i, 20)
    voting = [line for line in out.getvalue().splitlines() if "voting" in line]
    assert voting[0] == "    voting test (scenes): 2/20" and voting[-1] == "    voting test (scenes): 20/20"
    assert len(voting) == 10
    report_progress(steps, "train", 4, 8, lines=False, epoch="1/2", loss=0.7)
    steps("epoch 1/2: train/loss 0.7")
    assert "train:" not in out.getvalue()  # the trainer's own epoch lines say it
    assert "epoch 1/2: train/loss 0.7 [" in out.getvalue() and "ETA" in out.getvalue()


def test_a_plain_callable_gets_tenth_lines():
    seen: list[str] = []
    for i in range(1, 4):
        report_progress(seen.append, "generating target/train (scenes)", i, 3)
    report_progress(seen.append, "train", 3, 3, lines=False)
    report_progress(None, "train", 1, 1)
    assert seen == [f"generating target/train (scenes): {i}/3" for i in range(1, 4)]


def test_on_a_terminal_bars_are_drawn_and_lines_go_above_them():
    term = FakeTerminal()
    console = Console(term)
    assert console.bars
    bar = SuiteProgress(2, console, Clock())
    bar.started("a")
    steps = console.task()
    report_progress(steps, "train", 1, 4, lines=False, epoch="1/1", loss=0.25)
    bar.finished_trial("a", 0.3)
    steps.close()
    bar.close()
    text = term.getvalue()
    assert "\r" in text and "1/2" in text and "[1/2] a: test mIoU 0.300" in text
    assert "loss=0.250" in text


def test_the_trainer_reports_every_step(micro_config, scene_batch):
    import torch

    from peftbench.model import Segmentor
    from peftbench.registry import build_method
    from peftbench.train.config import TrainConfig
    from peftbench.train.trainer import Trainer

    model = Segmentor(micro_config, 5)
    method = build_method("linear")
    method.apply(model)
    events: list[tuple] = []

    class Recorder:
        def __call__(self, message: str) -> None:
            events.append(("line", message))

        def update(self, task, done, total, lines=True, **info):
            events.append((task, done, total, info.get("epoch")))

    trainer = Trainer(model, method, TrainConfig(epochs=2, batch_size=2), torch.device("cpu"), 5)
    trainer.fit(lambda epoch: [scene_batch, scene_batch], 2, progress=Recorder())
    steps = [e for e in events if e[0] == "train"]
    assert steps == [("train", 0, 4, "1/2"), ("train", 1, 4, "1/2"), ("train", 2, 4, "1/2"),
                     ("train", 3, 4, "2/2"), ("train", 4, 4, "2/2")]
    assert [e[1].split(":")[0] for e in events if e[0] == "line"] == ["epoch 1/2", "epoch 2/2"]
