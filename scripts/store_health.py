"""Count what the store invariants forbid in every MLflow sqlite store below a folder: RUNNING
runs and duplicate FINISHED fingerprints (the README's fault-test numbers come from running this
on the tests' pytest --basetemp folder). Usage: python scripts/store_health.py FOLDER"""

from __future__ import annotations

import collections
import glob
import os
import sqlite3
import sys


def main(folder: str) -> int:
    stores = running = duplicates = 0
    for db in sorted({os.path.realpath(p) for p in glob.glob(f"{folder}/**/mlflow.db", recursive=True)}):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                rows = con.execute(
                    "SELECT r.status, r.lifecycle_stage, t.value FROM runs r LEFT JOIN tags t "
                    "ON t.run_uuid = r.run_uuid AND t.key = 'peftbench.fingerprint'").fetchall()
        except sqlite3.Error:
            continue  # e.g. the corrupt-store test's file
        stores += 1
        running += sum(status == "RUNNING" for status, _, _ in rows)
        finished = collections.Counter(fp for status, stage, fp in rows
                                       if status == "FINISHED" and stage == "active" and fp)
        duplicates += sum(n - 1 for n in finished.values())
    print(f"{stores} stores: {running} RUNNING runs, {duplicates} duplicate FINISHED fingerprints")
    return 0 if running == duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
