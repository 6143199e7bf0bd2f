"""The ``peftbench`` command: run, train, report, params, methods, data."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from pathlib import Path


def _say(message: str) -> None:
    print(message, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from peftbench import tracking
    from peftbench.suite import load_suite, pretrain_spec, trial_specs

    from peftbench import ray_cluster, search

    suite = load_suite(args.suite, args.methods_dir)
    searched = search.search_specs(suite)
    # With a search, the final trials' settings are chosen by it; until then these stand in for them.
    specs = (trial_specs(dataclasses.replace(suite, seeds=suite.final.seeds)) if searched and suite.final
             else trial_specs(suite))
    if args.dry_run:
        pre = pretrain_spec(suite)
        if pre and suite.backbone.checkpoint == "pretrain":
            _say(f"pretrain: {pre['backbone']['config']} on {pre['dataset']['root']} -> {pre['checkpoint']}")
        if searched:
            _say(f"{len(searched)} search trials (ASHA may stop some early; priced in full):")
            for spec in searched:
                _say(f"  {spec['run_name']:<50} {spec['fingerprint']}")
        _say(f"{len(specs)} {'final ' if searched else ''}trials in suite {suite.name!r} "
             f"(experiment {suite.experiment_name!r}):")
        for spec in specs:
            _say(f"  {spec['run_name']:<50} {'setting chosen by the search' if searched else spec['fingerprint']}")
        _say(_expected_cost(suite, searched + specs, args))
        return 0
    from peftbench.tune import run_suite

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    address = None if args.sequential else ray_cluster.cluster_address(args.address)
    if address and tracking.sqlite_path(uri):
        _say("note: several nodes writing one sqlite file is fragile; an MLflow server (README) serves clusters")
    start = time.perf_counter()
    if searched:
        _say(f"suite {suite.name!r}: search, then final trials; tracking {uri}")
        summary = search.run_search_then_final(suite, uri, _say, sequential=args.sequential, rerun=args.rerun,
                                               address=address)
    else:
        _say(f"suite {suite.name!r}: {len(specs)} trials, tracking {uri}")
        summary = run_suite(suite, specs, uri, _say, sequential=args.sequential, rerun=args.rerun, address=address)
    _say(f"ran {summary['ran']} trials in {time.perf_counter() - start:.0f} s; "
         f"{len(summary['failed'])} failed")
    for name, error in summary["failed"]:
        _say(f"  FAILED {name}: {error}")
    _say(f"next: peftbench report {suite.experiment_name}"
         + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""))
    return 1 if summary["failed"] else 0


def _expected_cost(suite, specs, args: argparse.Namespace) -> str:
    """``--dry-run``'s price: step times from MLflow runs on this device model, else ``--bench`` records."""
    from peftbench import cost, tracking

    gpus = suite.resources.gpus_per_trial
    device = args.device_model or cost.device_model()
    sources = [cost.step_times_from_mlflow(tracking.resolve_tracking_uri(args.tracking_uri), device)]
    sources.append(cost.step_times_from_bench(args.bench, device))
    text = cost.format_cost(cost.expected_cost(specs, gpus, sources), gpus, device)
    if gpus and device == "cpu":
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
        if pre and suite.backbone.checkpoint == "pretrain":
            ensure_pretrained(pre, lambda: LocalRecorder(out / "pretrain"), _say)
        with LocalRecorder(out / spec["run_name"].replace("/", "_")) as recorder:
            final = run_trial(spec, recorder, progress=_say)
    else:
        from peftbench.tune import run_suite

        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        summary = run_suite(suite, [spec], uri, _say, sequential=True, rerun=True)
        return 1 if summary["failed"] else 0
    _say("  ".join(f"{k} {v:.4g}" for k, v in final.items() if not k.startswith("test/iou/")))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from peftbench import tracking
    from peftbench.report import write_report

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    out = Path(args.out or Path("reports") / args.experiment)
    for path in write_report(uri, args.experiment, out):
        _say(f"wrote {path}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from peftbench.params import parameter_table
    from peftbench.registry import discover

    discover(args.methods_dir)
    _say(parameter_table(args.backbone, args.num_classes, args.methods or None))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from peftbench.bench import bench_method, format_rows, synthetic_batch
    from peftbench.registry import discover

    discover(args.methods_dir)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch = synthetic_batch(args.points, args.batch_size, args.grid_size)
    _say(f"bench: backbone {args.backbone}, batch {args.batch_size} x {args.points} points, {device}, "
         f"amp {args.amp and device.type == 'cuda'}, median of {args.steps} steps")
    rows = []
    for method in args.methods:
        rows.append(bench_method(args.backbone, method, batch, device, args.steps, args.amp))
        _say(format_rows(rows[-1:]).splitlines()[-1] if rows[1:] else format_rows(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(device), "gpu": torch.cuda.get_device_name(device)
                                              if device.type == "cuda" else None, "args": vars(args) | {"func": None},
                                              "rows": rows}, indent=2, default=str))
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


def cmd_data(args: argparse.Namespace) -> int:
    from peftbench.data.check import inspect_dataset

    result = inspect_dataset(args.root, args.dataset)
    _say(result.text)
    return 0 if result.ok else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftbench", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--methods-dir", action="append", default=[], help="extra folder of method plugins")

    p = sub.add_parser("run", help="run a suite (Ray Tune, tracked in MLflow)")
    p.add_argument("suite")
    p.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///mlflow.db in this folder)")
    p.add_argument("--dry-run", action="store_true", help="list the trials without running them")
    p.add_argument("--sequential", action="store_true", help="run trials one by one in this process (no Ray)")
    p.add_argument("--rerun", action="store_true", help="run trials even if already FINISHED in MLflow")
    p.add_argument("--address", help="run on an existing Ray cluster: auto or HOST:PORT (default: RAY_ADDRESS, "
                   "else a private Ray on this host)")
    p.add_argument("--bench", action="append", default=[], metavar="JSON",
                   help="--dry-run: step times from `peftbench bench --out` records (after MLflow's)")
    p.add_argument("--device-model", help="--dry-run: price on this device (default: this machine's GPU, or cpu)")
    add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="run one trial of a suite")
    p.add_argument("suite")
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--split")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="write results to this folder instead of MLflow")
    p.add_argument("--tracking-uri")
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="tables and figures from an experiment's MLflow runs")
    p.add_argument("experiment")
    p.add_argument("--tracking-uri")
    p.add_argument("--out", help="output folder (default reports/<experiment>)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("params", help="trainable / total parameters of each method, without data or weights")
    p.add_argument("--backbone", default="sonata")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--methods", nargs="*")
    add_common(p)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("bench", help="time and memory of inference / train steps per method (synthetic scenes)")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--methods", nargs="+", default=["linear", "gem", "full"])
    p.add_argument("--points", type=int, default=20000, help="points per scene after grid sampling and crop")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grid-size", type=float, default=0.02)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--out", help="write the rows as JSON")
    add_common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("methods", help="list the registered methods and their settings")
    add_common(p)
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("data", help="inspect a dataset folder before a long run")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("check", help="splits, scene and point counts, label histogram, problems (exit 2 if any)")
    q.add_argument("root", help="the dataset folder (Pointcept's preprocessed layout)")
    q.add_argument("--dataset", required=True,
                   help="dataset kind: synthetic, scannet, scannet200, scannetpp, s3dis")
    q.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from peftbench.errors import PeftbenchError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PeftbenchError as err:
        if args.debug:
            traceback.print_exc()
        print(f"peftbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
