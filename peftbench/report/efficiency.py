"""The efficiency view (the paper's Table 7, and beyond): parameters, peak memory, latency, train
step, throughput and GPU-hours per method, one table per (hardware, dataset), with ratios to a
baseline row taken within one hardware only."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from peftbench import cost
from peftbench.hardware import is_gpu
from peftbench.report.compare import baseline_for
from peftbench.report.render import Table
from peftbench.report.tables import DASH, human_count, human_pct, latest_finished, reference_split

UNKNOWN = "unknown hardware"
# (metric, column title, formatter) of the measured quantities; each gets a relative column.
MEASURES = [
    ("eff/peak_mem_mb", "peak memory (MB)", "{:,.0f}"),
    ("eff/latency_ms", "latency (ms)", "{:,.1f}"),
    ("eff/step_time_ms", "train step (ms)", "{:,.1f}"),
    ("eff/points_per_s", "points/s", "{:,.0f}"),
]


def gpus_per_run(runs: pd.DataFrame) -> pd.Series:
    """GPUs a run held: metric ``cost/gpus`` (fractions included), else its Ray GPU ids, else 1 on a
    GPU and 0 on a CPU or unknown hardware (runs from before either was logged)."""
    def one(row: pd.Series) -> float:
        logged = row.get(cost.GPUS_METRIC)
        if logged is not None and pd.notna(logged):
            return float(logged)
        ids = row.get("gpu_ids")
        if isinstance(ids, str) and ids.strip():
            return len([i for i in ids.split(",") if i.strip()])
        return 1 if is_gpu(row.get("hardware")) else 0

    return runs.apply(one, axis=1) if len(runs) else pd.Series(dtype=int)


def gpu_hours(runs: pd.DataFrame) -> pd.Series:
    """GPU-hours per run (``cost.gpu_hours``: ``time/train_s`` × GPUs held); 0 for CPU runs."""
    if runs.empty:
        return pd.Series(dtype=float)
    with_gpus = runs.assign(**{cost.GPUS_METRIC: gpus_per_run(runs)})
    return with_gpus.apply(lambda r: cost.gpu_hours(r.to_dict()), axis=1)


def relative(value: float, base: float) -> str:
    """The paper's way of writing a ratio: "+15 %", "−3 %"."""
    if pd.isna(value) or pd.isna(base) or base == 0:
        return DASH
    pct = (value / base - 1.0) * 100.0
    return f"{'+' if pct >= 0 else '−'}{abs(pct):.0f} %"


def efficiency_frame(runs: pd.DataFrame, methods: Sequence[str], miou: dict[tuple[str, str, str], float]
                     ) -> pd.DataFrame:
    """Per (hardware, dataset, method): means over finished runs of the dataset's reference split.

    ``gpu_hours`` sums over every finished run of the method on that hardware and dataset (all
    splits): what the results cost. ``miou`` maps (dataset, split, method) to the mean test mIoU.
    """
    done = latest_finished(runs[runs["kind"] != "combined"]).copy()
    if done.empty:
        return pd.DataFrame()
    done["hardware"] = done["hardware"].fillna(UNKNOWN)
    done["gpu_hours"] = gpu_hours(done)
    rows = []
    for (hardware, dataset), cell in done.groupby(["hardware", "dataset"], sort=False):
        split = reference_split(list(dict.fromkeys(cell["split"])))
        for method in [m for m in methods if m in set(cell["method"])]:
            mine = cell[cell["method"] == method]
            ref = mine[mine["split"] == split]
            row = {"hardware": hardware, "dataset": dataset, "split": split, "method": method,
                   "runs": len(ref), "trainable": _first(mine, "params/trainable"),
                   "total": _first(mine, "params/total"), "trainable_pct": _first(mine, "params/trainable_pct"),
                   "train_min": _mean(ref, "time/train_s") / 60.0, "gpu_hours": mine["gpu_hours"].sum(),
                   "gpus": float(gpus_per_run(ref).max()) if len(ref) else 0.0,
                   "mIoU": miou.get((dataset, split, method), float("nan"))}
            row.update({metric: _mean(ref, metric) for metric, _, _ in MEASURES})
            rows.append(row)
    return pd.DataFrame(rows)


def _mean(frame: pd.DataFrame, col: str) -> float:
    return float(frame[col].mean()) if col in frame and frame[col].notna().any() else float("nan")


def _first(frame: pd.DataFrame, col: str) -> float:
    vals = frame[col].dropna() if col in frame else pd.Series(dtype=float)
    return float(vals.mode().iloc[0]) if len(vals) else float("nan")


def efficiency_tables(frame: pd.DataFrame, methods: Sequence[str], baseline: str) -> list[Table]:
    """One table per (hardware, dataset); relative columns against the baseline of the same group."""
    if frame.empty:
        return []
    kinds = frame["hardware"].nunique()
    tables = []
    for (hardware, dataset), group in frame.groupby(["hardware", "dataset"], sort=False):
        present = group["method"].tolist()
        by_method = group.set_index("method")
        show_gpu = bool((group["gpus"] > 0).any())
        headers = ["method", "trainable", "total", "trainable %", "test mIoU"]
        for _, title, _ in MEASURES:
            headers += [title, "Δ"]
        headers += ["train time (min)"] + (["GPU-h (all runs)"] if show_gpu else []) + ["runs"]
        rows, missing_base = [], False
        for method in present:
            r = by_method.loc[method]
            base_name = baseline_for(method, present, baseline)
            base = by_method.loc[base_name] if base_name else None
            missing_base |= base is None
            cells = [method, human_count(r["trainable"]), human_count(r["total"]), human_pct(r["trainable_pct"]),
                     _fmt("{:.1f}", r["mIoU"])]
            for metric, _, fmt in MEASURES:
                if base is None:
                    rel = DASH
                else:
                    rel = "baseline" if base_name == method else relative(r[metric], base[metric])
                cells += [_fmt(fmt, r[metric]), rel]
            cells.append(_fmt("{:.1f}", r["train_min"]))
            if show_gpu:
                cells.append(_fmt("{:.2f}", r["gpu_hours"]))
            cells.append(str(r["runs"]))
            rows.append(cells)
        notes = [f"Measured on {hardware}; mean over the finished runs of split `{group['split'].iloc[0]}`. "
                 "Peak memory: the CUDA allocator's peak on a GPU, the sampled resident set on a CPU; latency: "
                 "inference on one validation scene; train step: mean after warm-up.",
                 f"Δ: relative to `{baseline}` on the same hardware and dataset."]
        if missing_base:
            notes.append(f"No `{baseline}` run here, so no ratio (\"—\").")
        if kinds > 1:
            notes.append(f"The runs were measured on {kinds} kinds of hardware: one table each, never one ratio "
                         "across them.")
        if show_gpu:
            notes.append("GPU-h = training wall time × GPUs held (metric `cost/gpus`, fractions included; "
                         "older runs: their Ray GPU ids), summed over all finished runs of the method on this "
                         "hardware and dataset (every split and seed).")
        tables.append(Table(f"{dataset} — {hardware}", headers, rows, notes))
    return tables


def _fmt(fmt: str, value: float) -> str:
    return DASH if value is None or pd.isna(value) else fmt.format(value)


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both (lower cost, higher score), by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    front, best = [], float("-inf")
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front
