"""Several experiments in one report: a method found in more than one of them is shown once per
experiment, as ``method@experiment``, never silently merged."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

SEP = "@"


def combine(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Concatenate ``load_runs`` frames keyed by experiment, with an ``experiment`` column.

    With more than one experiment, a method that occurs in two or more of them gets the suffix
    ``@<experiment>`` in each, and fingerprints are prefixed by the experiment so that the same
    trial run in two experiments (e.g. on two kinds of hardware) counts in both.
    """
    tagged = [f.assign(experiment=name) for name, f in frames.items()]
    runs = pd.concat(tagged, ignore_index=True) if tagged else pd.DataFrame()
    if len(frames) < 2 or runs.empty:
        return runs
    shared = {m for m, exps in runs.groupby("method")["experiment"].nunique().items() if exps > 1}
    suffix = runs["method"].isin(shared)
    runs.loc[suffix, "method"] = runs.loc[suffix, "method"] + SEP + runs.loc[suffix, "experiment"]
    has_fp = runs["fingerprint"].notna()
    runs.loc[has_fp, "fingerprint"] = runs.loc[has_fp, "experiment"] + "/" + runs.loc[has_fp, "fingerprint"]
    return runs


def baseline_for(method: str, methods: Sequence[str], baseline: str) -> str | None:
    """The baseline ``method`` is compared with: from its own experiment when suffixed."""
    if SEP in method:
        own = baseline + SEP + method.split(SEP, 1)[1]
        if own in methods:
            return own
    return baseline if baseline in methods else None
