"""The ``peftbench`` command: run, train, report, params, bench, methods, suites, data, doctor."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

from peftbench.cli_bench import cmd_bench


EXIT_CODES = """exit status:
  0    everything asked for finished
  1    one or more trials failed (the others were run and tracked)
  2    a user error: bad suite, unknown method, missing data or checkpoint (one line; --debug for the traceback)
  130  interrupted (Ctrl-C)"""

RUN_EXAMPLES = """examples:
  peftbench run demo                                    the built-in CPU demo (or any suite file)
  peftbench run suites/paper.yaml --dry-run             list the trials, their steps and expected GPU-hours
  peftbench run paper --dry-run --device-model "NVIDIA H100 80GB HBM3"   price them for another GPU
  peftbench run paper --dry-run --bench bench.json      price them from `peftbench bench --out bench.json`
  peftbench run my.yaml --sequential                    one trial after another in this process, no Ray
  peftbench run my.yaml --rerun                         run trials already FINISHED in MLflow again
  peftbench run my.yaml --tracking-uri http://mlflow:5000   track on an MLflow server
  peftbench run paper --address auto                    submit to a running Ray cluster (`ray start --head` first)
  peftbench run my.yaml --methods-dir plugins/          load method plugins from a folder
  peftbench run demo --quiet                            only one line per finished trial and the summary
  peftbench run my.yaml --debug                         a user error's traceback besides its one line
"""


def _say(message: str) -> None:
    print(message, flush=True)


def _console(args: argparse.Namespace):
    from peftbench.progress import Console

    return Console(quiet=getattr(args, "quiet", False))


def cmd_run(args: argparse.Namespace) -> int:
    from peftbench import tracking
    from peftbench.preflight import check_before_trials
    from peftbench.suite import load_suite, pretrain_spec, trial_specs

    from peftbench import ray_cluster, search

    suite = load_suite(args.suite, args.methods_dir)
    searched = search.search_specs(suite)
    # With a search, the final trials' settings are chosen by it; until then these stand in for them.
    specs = (trial_specs(dataclasses.replace(suite, seeds=suite.final.seeds)) if searched and suite.final
             else trial_specs(suite))
    address = None if args.sequential else ray_cluster.cluster_address(args.address)
    # On a cluster the GPUs are the cluster's: checked once joined, not on this host.
    check_before_trials(suite, dry_run=args.dry_run, sequential=args.sequential or address is not None, say=_say)
    if args.dry_run:
        pre = pretrain_spec(suite)
        if pre and suite.backbone.checkpoint == "pretrain":
            _say(f"pretrain: {pre['backbone']['config']} on {pre['dataset']['root']} -> {pre['checkpoint']}")
        from peftbench.train.schedule import planned_steps

        if searched:
            _say(f"{len(searched)} search trials (ASHA may stop some early; priced in full):")
            for spec in searched:
                _say(f"  {spec['run_name']:<50} {spec['fingerprint']}  {planned_steps(spec)}")
        _say(f"{len(specs)} {'final ' if searched else ''}trials in suite {suite.name!r} "
             f"(experiment {suite.experiment_name!r}):")
        for spec in specs:
            chosen = "setting chosen by the search" if searched else spec["fingerprint"]
            _say(f"  {spec['run_name']:<50} {chosen}  {planned_steps(spec)}")
        _say(_expected_cost(suite, searched + specs, args))
        return 0
    from peftbench.tune import run_suite

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    if address and tracking.sqlite_path(uri):
        _say("note: several nodes writing one sqlite file is fragile; an MLflow server (README) serves clusters")
    start = time.perf_counter()
    if searched:
        _say(f"suite {suite.name!r}: search, then final trials; tracking {uri}")
        summary = search.run_search_then_final(suite, uri, _console(args), sequential=args.sequential,
                                               rerun=args.rerun, address=address)
    else:
        _say(f"suite {suite.name!r}: {len(specs)} trials, tracking {uri}")
        summary = run_suite(suite, specs, uri, _console(args), sequential=args.sequential, rerun=args.rerun,
                            address=address)
    return _summarize(summary, suite.experiment_name, args.tracking_uri, time.perf_counter() - start)


def _summarize(summary: dict, experiment: str, tracking_uri: str | None, seconds: float) -> int:
    """The last lines of `peftbench run`, and its exit status: 130 interrupted, 1 failed trials, else 0."""
    if summary.get("interrupted"):
        counts = ", ".join(f"{n} {what}" for what, n in summary.get("counts", {}).items() if n or what != "failed")
        print(f"peftbench: interrupted{': ' + counts if counts else ''}; rerun the same command to run what is left",
              file=sys.stderr)
        return 130
    _say(f"ran {summary['ran']} trials in {seconds:.0f} s; {len(summary['failed'])} failed")
    for name, error in summary["failed"]:
        _say(f"  FAILED {name}: {error}")
    if summary["failed"]:
        _say("failed trials are not FINISHED in MLflow: fix the cause and rerun the same command to run them again")
    _say(f"next: peftbench report {experiment}" + (f" --tracking-uri {tracking_uri}" if tracking_uri else ""))
    return 1 if summary["failed"] else 0


def _expected_cost(suite, specs, args: argparse.Namespace) -> str:
    """``--dry-run``'s price: step times from MLflow runs on this hardware, else ``--bench`` records."""
    from peftbench import cost, tracking
    from peftbench.hardware import hardware_name, is_gpu

    gpus = suite.resources.gpus_per_trial
    device = args.device_model or hardware_name()
    sources = [cost.step_times_from_mlflow(tracking.resolve_tracking_uri(args.tracking_uri), device)]
    sources.append(cost.step_times_from_bench(args.bench, device))
    text = cost.format_cost(cost.expected_cost(specs, gpus, sources), gpus, device)
    if gpus and not is_gpu(device):
        text += "\n  (no GPU here: pass --device-model with the GPU's name as torch/nvidia-smi print it)"
    return text


def cmd_train(args: argparse.Namespace) -> int:
    from peftbench import tracking
    from peftbench.errors import PeftbenchError
    from peftbench.suite import load_suite, pretrain_spec, trial_specs
    from peftbench.train.recorder import LocalRecorder
    from peftbench.train.trial import ensure_pretrained, run_trial

    suite = load_suite(args.suite, args.methods_dir)
    specs = [s for s in trial_specs(suite)
             if (args.method in (None, s["method"]["label"])) and (args.seed is None or s["seed"] == args.seed)
             and (args.dataset in (None, s["dataset"]["label"])) and (args.split in (None, s["split"]))]
    if not specs:
        raise PeftbenchError("no trial of the suite matches --method/--dataset/--split/--seed; "
                             "list them with `peftbench run SUITE --dry-run`")
    spec = specs[0]
    pre = pretrain_spec(suite)
    if args.out:
        out = Path(args.out)
        console = _console(args)
        if pre and suite.backbone.checkpoint == "pretrain":
            ensure_pretrained(pre, lambda: LocalRecorder(out / "pretrain"), console.task())
        steps = console.task()  # epoch/step bar with loss and ETA
        with LocalRecorder(out / spec["run_name"].replace("/", "_")) as recorder:
            final = run_trial(spec, recorder, progress=steps)
        steps.close()
    else:
        from peftbench.tune import run_suite

        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        summary = run_suite(suite, [spec], uri, _console(args), sequential=True, rerun=True)
        return 130 if summary.get("interrupted") else 1 if summary["failed"] else 0
    _say("  ".join(f"{k} {v:.4g}" for k, v in final.items() if not k.startswith("test/iou/")))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from peftbench import tracking
    from peftbench.report import write_report

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    out = Path(args.out or Path("reports") / "+".join(args.experiment))
    layout = None
    if args.suite:  # lay out the tables from a suite file instead of the block logged with the runs
        from peftbench.suite import load_suite

        spec = load_suite(args.suite).report
        layout = dataclasses.asdict(spec) if spec else {}
    paths = write_report(uri, args.experiment, out, baseline=args.baseline, layout=layout,
                         log_to_mlflow=not args.no_mlflow, say=_say)
    _say(f"wrote {len(paths)} files to {out} (open {out / 'index.html'} or {out / 'summary.md'})")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from peftbench.params import parameter_table
    from peftbench.registry import discover

    discover(args.methods_dir)
    _say(parameter_table(args.backbone, args.num_classes, args.methods or None))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from peftbench.registry import available_methods, discover, get_method

    discover(args.methods_dir)
    for name in available_methods():
        cls = get_method(name)
        defaults = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.config_class))
        doc = (cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or "").strip()
        _say(f"{name:<10} {doc.splitlines()[0] if doc else ''}")
        if defaults:
            _say(f"{'':<10} settings: {defaults}")
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    from peftbench.builtin_suites import builtin_suites
    from peftbench.catalog import suites_table
    from peftbench.errors import PeftbenchError

    if args.name is None:
        _say(suites_table())
        return 0
    shipped = builtin_suites()
    if args.name not in shipped:
        raise PeftbenchError(f"no built-in suite {args.name!r}; built-in: {', '.join(shipped) or 'none'}")
    print(shipped[args.name].read_text(), end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from peftbench.doctor import doctor_report

    _say(doctor_report())
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from peftbench.data.check import inspect_dataset

    result = inspect_dataset(args.root, args.dataset)
    _say(result.text)
    return 0 if result.ok else 2


def _global_flags(defaults: bool) -> argparse.ArgumentParser:
    """--debug and --quiet, accepted before or after the subcommand (``default=SUPPRESS`` below the
    top level, so a flag given before the subcommand is not reset by the subcommand's default)."""
    flags = argparse.ArgumentParser(add_help=False)
    default = False if defaults else argparse.SUPPRESS
    flags.add_argument("--debug", action="store_true", default=default, help="show tracebacks of errors")
    flags.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress bars or epoch lines: one line per finished trial and the summary")
    return flags


def build_parser() -> argparse.ArgumentParser:
    from peftbench import __version__

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="peftbench", formatter_class=raw, parents=[_global_flags(True)],
        description="Benchmark PEFT methods on pretrained 3D point-cloud transformers (PTv3 / Sonata).",
        epilog=f"start with: peftbench run demo && peftbench report demo\n\n{EXIT_CODES}")
    parser.add_argument("--version", action="version", version=f"peftbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_global_flags(False)]

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--methods-dir", action="append", default=[], metavar="DIR",
                       help="extra folder of method plugins (repeatable)")

    p = sub.add_parser("run", help="run a suite (Ray Tune, tracked in MLflow)", parents=common, formatter_class=raw,
                       description="Run every trial of a suite not yet FINISHED in MLflow, with a progress bar.",
                       epilog=f"{RUN_EXAMPLES}\n{EXIT_CODES}")
    p.add_argument("suite", help="a suite file, or the name of a built-in suite (`peftbench suites` lists them)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default sqlite:///mlflow.db in this folder)")
    p.add_argument("--dry-run", action="store_true", help="list the trials without running them")
    p.add_argument("--sequential", action="store_true",
                   help="run trials one by one in this process (no Ray), with an epoch/step bar")
    p.add_argument("--rerun", action="store_true", help="run trials even if already FINISHED in MLflow")
    p.add_argument("--address", metavar="ADDR", help="run on an existing Ray cluster: auto or HOST:PORT "
                   "(default: RAY_ADDRESS, else a private Ray on this host)")
    p.add_argument("--bench", action="append", default=[], metavar="JSON",
                   help="--dry-run: step times from `peftbench bench --out` records (after MLflow's)")
    p.add_argument("--device-model", help="--dry-run: price on this hardware, named as runs record it (tag "
                   "peftbench.hardware; default: this machine's GPU, or its CPU)")
    add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="run one trial of a suite", parents=common, epilog=EXIT_CODES,
                       formatter_class=raw)
    p.add_argument("suite")
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--split")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="write results to this folder instead of MLflow")
    p.add_argument("--tracking-uri")
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="tables and figures from an experiment's MLflow runs (several: side by side)")
    p.add_argument("experiment", nargs="+", help="one experiment, or several to compare")
    p.add_argument("--tracking-uri")
    p.add_argument("--out", help="output folder (default reports/<experiment>, or reports/<A>+<B> for several)")
    p.add_argument("--baseline", help="method label for differences and ratios (default: the suite's, else linear)")
    p.add_argument("--suite", help="take the ablation tables (`report:` block) from this suite file")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report folder as an MLflow `report` run")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("params", help="trainable / total parameters of each method, without data or weights")
    p.add_argument("--backbone", default="sonata")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--methods", nargs="*")
    add_common(p)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("bench", help="time and memory of inference / train steps per method (synthetic scenes)")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--methods", nargs="+", default=["frozen", "linear", "gem", "full"],
                   help="registered methods, or 'frozen' (frozen backbone, gradient through every block)")
    p.add_argument("--points", type=int, default=20000, help="points per scene after grid sampling and crop")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--batch-sizes", type=int, nargs="+", help="several batch sizes (overrides --batch-size)")
    p.add_argument("--dtypes", nargs="+", default=["fp16"], help="autocast dtypes on CUDA: fp16 bf16 fp32")
    p.add_argument("--grid-size", type=float, default=0.02)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--profile", action="store_true", help="add a per-stage time breakdown (torch profiler)")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks (as train.compile; the "
                   "warm-up steps pay the compile)")
    p.add_argument("--report", help="write bench.json, bench.md and bench.png into this folder")
    p.add_argument("--reference", help="JSON of scripts/reference_bench.py, shown side by side in --report")
    p.add_argument("--out", help="write the rows as JSON")
    add_common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("methods", help="list the registered methods and their settings")
    add_common(p)
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("suites", help="list the built-in suites (trials, what each needs), or print one")
    p.add_argument("name", nargs="?", help="print this built-in suite's YAML (to copy and edit)")
    p.set_defaults(func=cmd_suites)

    p = sub.add_parser("doctor", help="versions, GPUs, backends and paths for a bug report")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("data", help="inspect a dataset folder before a long run")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("check", help="splits, scene and point counts, label histogram, problems (exit 2 if any)")
    q.add_argument("root", help="the dataset folder (Pointcept's preprocessed layout)")
    q.add_argument("--dataset", required=True,
                   help="dataset kind: synthetic, scannet, scannet200, scannetpp, s3dis")
    q.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from peftbench.stdout import quiet_when_reader_leaves

    return quiet_when_reader_leaves(lambda: _main(argv))


def console_main() -> None:
    """The ``peftbench`` command: ``main``, then exit with its status. After an interrupt (130)
    everything is already recorded (runs KILLED, Ray shut down, locks released), so the process
    leaves at once: a library's worker thread still alive must not hold the exit (once, in a full
    test run, the driver printed its interrupted line and was still alive 2 minutes later)."""
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _main(argv: list[str] | None) -> int:
    from peftbench.errors import PeftbenchError
    from peftbench.interrupt import raised_by_interrupt

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PeftbenchError as err:
        if args.debug:
            traceback.print_exc()
        print(f"peftbench: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Exception) as err:  # an error raised while a Ctrl-C was handled is the Ctrl-C
        if not raised_by_interrupt(err):
            raise
        print("peftbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    console_main()
