"""Paper-style tables from a ``load_runs`` frame: summary numbers and their cells (``render`` draws them).

Failed or missing runs are shown ("failed (k)", "—"), never silently dropped: a method that is
absent from one dataset/split still gets a row there.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

DASH = "—"
REPORT_METRICS = ["test/mIoU", "test/mAcc", "test/allAcc"]
_BAD = ("FAILED", "KILLED")


def metric_label(metric: str) -> str:
    """``test/mIoU`` -> ``mIoU``; ``test/iou/chair`` -> ``chair``."""
    return metric.rsplit("/", 1)[-1]


def _scale(metric: str) -> float:
    # test/ and val/ metrics are fractions 0..1 and are reported in %; others (eff/*) as logged.
    return 100.0 if metric.split("/", 1)[0] in ("test", "val") else 1.0


def human_count(n: float | None) -> str:
    """Parameter counts paper-style: 812 -> "812", 20480 -> "0.02M", 1.8e6 -> "1.8M"."""
    if n is None or pd.isna(n):
        return DASH
    n = int(n)
    if n < 1000:
        return str(n)
    if n < 10_000:
        return f"{n / 1e3:.1f}K"
    m = n / 1e6
    if m >= 100:
        return f"{m:.0f}M"
    return f"{m:.1f}M" if m >= 1 else f"{m:.2g}M"


def human_pct(p: float | None) -> str:
    """Trainable %: "100.0", "4.2", "0.05", "0.0012"."""
    if p is None or pd.isna(p):
        return DASH
    return f"{p:.1f}" if p >= 1 else f"{p:.2g}"


def ordered(values: Sequence[str], order: Sequence[str] | None = None) -> list[str]:
    """Unique values in first-appearance order; ``order`` first, the rest (never dropped) after."""
    seen = list(dict.fromkeys(v for v in values if isinstance(v, str)))
    head = [v for v in (order or []) if v in seen]
    return head + [v for v in seen if v not in head]


def latest_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED runs, one per fingerprint (a forced re-run must not count as an extra seed)."""
    done = runs[runs["status"] == "FINISHED"].sort_values("end_time", kind="stable")
    has_fp = done["fingerprint"].notna()
    keep = done[has_fp].drop_duplicates("fingerprint", keep="last")
    return pd.concat([keep, done[~has_fp]]).sort_index()


def _count_unresolved(sel: pd.DataFrame, statuses: Sequence[str], finished_fps: set) -> int:
    """Distinct trials in ``statuses`` that were not later completed by a FINISHED re-run."""
    bad = sel[sel["status"].isin(statuses)]
    bad = bad[~bad["fingerprint"].isin(finished_fps) | bad["fingerprint"].isna()]
    return int(bad["fingerprint"].nunique() + bad["fingerprint"].isna().sum())


def _mode(values: pd.Series) -> float | None:
    values = values.dropna()
    return None if values.empty else float(values.mode().iloc[0])


def _cell(values: pd.Series, failed: int, running: int) -> str:
    if values.empty:
        return f"failed ({failed})" if failed else (f"running ({running})" if running else DASH)
    if len(values) == 1:  # std of one seed is undefined: show the value alone
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def summary_table(
    runs: pd.DataFrame, metric: str | Sequence[str] = "test/mIoU",
    method_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per (dataset, split, method): parameters, mean ± std over seeds, seeds, failures.

    Columns: dataset, split, method, trainable_params (exact), trainable_params_h ("1.8M"),
    trainable_pct, trainable_pct_h, seeds (finished), failed, running, and per metric
    ``<label>`` ("78.3 ± 0.4", in % for test/val metrics, sample std), ``<label>_mean``,
    ``<label>_std``. Methods in first-appearance order unless ``method_order`` is given.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    methods = ordered(runs["method"].tolist(), method_order)
    groups = list(dict.fromkeys(zip(runs["dataset"], runs["split"], strict=True)))
    done = latest_finished(runs)
    finished_fps = set(done["fingerprint"].dropna())
    rows = []
    for dataset, split in groups:
        for method in methods:
            key = (runs["dataset"] == dataset) & (runs["split"] == split) & (runs["method"] == method)
            sel, fin = runs[key], done[key.reindex(done.index)]
            failed = _count_unresolved(sel, _BAD, finished_fps)
            running = _count_unresolved(sel, ("RUNNING", "SCHEDULED"), finished_fps)
            src = fin if not fin.empty else sel  # counts are logged even by runs that fail later
            trainable = _mode(src.get("params/trainable", pd.Series(dtype=float)))
            pct = _mode(src.get("params/trainable_pct", pd.Series(dtype=float)))
            row = {
                "dataset": dataset, "split": split, "method": method,
                "trainable_params": None if trainable is None else int(trainable),
                "trainable_params_h": human_count(trainable),
                "trainable_pct": pct, "trainable_pct_h": human_pct(pct),
                "seeds": len(fin), "failed": failed, "running": running,
            }
            for m in metrics:
                label = metric_label(m)
                vals = (fin[m] if m in fin else pd.Series(dtype=float)).dropna() * _scale(m)
                row[label] = _cell(vals, failed, running)
                row[f"{label}_mean"] = vals.mean() if len(vals) else float("nan")
                row[f"{label}_std"] = vals.std(ddof=1) if len(vals) > 1 else float("nan")
            rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["trainable_params"] = out["trainable_params"].astype("Int64")
    return out


def reference_split(splits: Sequence[str]) -> str:
    """The split per-class tables use: "full" if present, else the first one seen."""
    return "full" if "full" in splits else splits[0]


def per_class_table(
    runs: pd.DataFrame, classes: dict[str, list[str]], method_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per dataset (reference split) and method: mean test IoU (%) per class over finished seeds."""
    done = latest_finished(runs)
    methods = ordered(runs["method"].tolist(), method_order)
    rows = []
    for dataset in ordered(runs["dataset"].tolist()):
        split = reference_split(ordered(runs.loc[runs["dataset"] == dataset, "split"].tolist()))
        for method in methods:
            fin = done[(done["dataset"] == dataset) & (done["split"] == split)
                       & (done["method"] == method)]
            row: dict[str, object] = {"dataset": dataset, "split": split, "method": method}
            for k in classes.get(dataset, []):
                col = f"test/iou/{k}"
                vals = fin[col].dropna() if col in fin else pd.Series(dtype=float)
                row[k] = vals.mean() * 100 if len(vals) else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def best_rows(table: pd.DataFrame, col: str) -> set[int]:
    """Index labels of the rows with the highest ``col`` (ties all win; all-NaN: none)."""
    if col not in table or table[col].isna().all():
        return set()
    best = table[col].max()
    return set(table.index[table[col] >= best - 1e-9])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; first column left-aligned, the rest right-aligned."""
    def esc(v: object) -> str:
        return str(v).replace("|", r"\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def display_rows(table: pd.DataFrame) -> list[list[str]]:
    """Cells of a results table (``SUMMARY_HEADERS``), one row per summary row."""
    labels = [metric_label(m) for m in REPORT_METRICS]
    rows = []
    for _, r in table.iterrows():
        seeds = str(r["seeds"]) + (f", {r['failed']} failed" if r["failed"] else "") + (
            f", {r['running']} running" if r["running"] else "")
        cells = [str(r[label]) if label in r else DASH for label in labels]
        rows.append([r["method"], r["trainable_params_h"], r["trainable_pct_h"], *cells, seeds])
    return rows


SUMMARY_HEADERS = ["method", "trainable params", "trainable %", "mIoU", "mAcc", "allAcc", "seeds"]


def per_class_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of one dataset's per-class IoU (%): method rows, class columns."""
    values = table.dropna(axis=1, how="all")
    classes = [c for c in values.columns if c not in ("dataset", "split", "method")]
    rows = [[r["method"], *(DASH if pd.isna(r[k]) else f"{r[k]:.1f}" for k in classes)]
            for _, r in values.iterrows()]
    return ["method", *classes], rows


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        # Unicode the tables use, for pdflatex without extra packages.
        "†": r"$^\dagger$", "Δ": r"$\Delta$", "−": r"$-$", "·": r"$\cdot$"}


def tex_escape(s: object) -> str:
    out = "".join(_TEX.get(ch, ch) for ch in str(s))  # one pass: no double escaping
    return out.replace(" ± ", r" $\pm$ ").replace(DASH, "--")
