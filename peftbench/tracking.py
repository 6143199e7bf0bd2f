"""MLflow tracking: one trial = one MLflow run, logged through an explicit client.

Why an explicit ``MlflowClient`` with explicit run ids instead of ``mlflow.start_run``: the fluent
API keeps one global active run per process, so two trials in one process (or a driver that logs
while a trial runs) would write into each other. ``mlflow`` is imported lazily inside functions:
the GPU machine has no mlflow, and importing this module must still work there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from peftbench.errors import PeftbenchError
from peftbench.interrupt import raised_by_interrupt
from peftbench.owner import this_process

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow's limits (mlflow.utils.validation), repeated here so this module imports without mlflow.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_KEY = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_SERVER_SCHEMES = ("http://", "https://")
OWNER_TAG = "peftbench.owner"    # host:pid:start of the process that holds the run open
DRIVER_TAG = "peftbench.driver"  # the same for the `peftbench run` that started the trial
CHECKPOINTS_TAG = "peftbench.checkpoints"  # the folder of the trial's checkpoints (Ray's storage)
# SQLAlchemy backends MLflow supports besides sqlite; passed through untouched.
_DB_SCHEMES = ("postgresql", "mysql", "mssql")

_FIX_HINT = ("use an sqlite database (e.g. 'sqlite:////abs/path/mlflow.db', or leave it unset for "
             "./mlflow.db) or an MLflow server ('http://127.0.0.1:5055')")


def _quiet() -> None:
    """Silence import/migration noise so CLI output stays readable (environment.md §6)."""
    warnings.filterwarnings("ignore", message=r".*noload.*loader strategy is deprecated")
    warnings.filterwarnings("ignore", module=r"alembic(\..*)?")
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def import_mlflow() -> Any:
    """Import mlflow quietly; PeftbenchError (what to install) where it is missing."""
    _quiet()
    try:
        import mlflow
    except ImportError as e:  # the GPU machine has no mlflow
        raise PeftbenchError(
            "mlflow is not installed in this environment; install it (pip install mlflow==3.17.2) "
            "or run tracking/reporting on a machine that has it"
        ) from e
    return mlflow


def resolve_tracking_uri(uri: str | None) -> str:
    """Return an absolute MLflow tracking URI.

    ``None`` -> ``sqlite:///<abs cwd>/mlflow.db``; relative sqlite paths become absolute (Ray Tune
    trials run in their own working directory, so a relative path would scatter databases);
    ``http(s)://`` is passed through; the file store (``file:``, bare paths) is refused because it is
    an error in MLflow 3.
    """
    if uri is None or not str(uri).strip():
        return "sqlite:///" + str(Path.cwd().resolve() / "mlflow.db")
    uri = str(uri).strip()
    if uri.startswith(_SERVER_SCHEMES):
        return uri.rstrip("/")
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            raise PeftbenchError(
                f"tracking URI {uri!r} is not a file-backed sqlite URI (in-memory databases vanish "
                f"with the process); {_FIX_HINT}"
            )
        path = uri[len("sqlite:///"):]
        if not path or path == ":memory:" or "?" in path:
            raise PeftbenchError(f"tracking URI {uri!r} has no database file path; {_FIX_HINT}")
        return "sqlite:///" + str(Path(path).expanduser().resolve())
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme in _DB_SCHEMES:
        return uri
    if uri.startswith("file:") or not scheme:
        raise PeftbenchError(
            f"tracking URI {uri!r} points at MLflow's file store, which is an error in MLflow 3; "
            f"{_FIX_HINT}"
        )
    raise PeftbenchError(f"unsupported tracking URI scheme {scheme!r} in {uri!r}; {_FIX_HINT}")


def sqlite_path(uri: str) -> Path | None:
    """The database file of an (absolute) sqlite URI, or None for servers/other databases."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str, *, must_exist: bool = False) -> None:
    """Fail fast with a fix-it message instead of MLflow's minutes of HTTP retries.

    ``must_exist`` is for readers (reports): MLflow would otherwise silently create an empty
    database at a mistyped path and report "no experiment".
    """
    db = sqlite_path(uri)
    if db is not None:
        if must_exist and not db.is_file():
            raise PeftbenchError(
                f"no MLflow database at {db}; run a suite first or pass the right --tracking-uri"
            )
        if db.is_file():
            _check_sqlite_file(db)
        return
    if uri.startswith(_SERVER_SCHEMES):
        try:
            with urllib.request.urlopen(uri + "/health", timeout=5) as resp:  # noqa: S310
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise PeftbenchError(
                f"cannot reach the MLflow server at {uri} ({e}); start it (mlflow server "
                f"--backend-store-uri sqlite:////abs/path/mlflow.db --host 127.0.0.1 --port 5055) "
                f"or use an sqlite tracking URI"
            ) from e


def _check_sqlite_file(db: Path) -> None:
    """A corrupt or foreign file would otherwise cost MLflow's retries and a long traceback."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise PeftbenchError(f"{db} is not a readable MLflow database ({err}); move it aside "
                             f"(mv {db} {db}.broken) to start a new store, or pass --tracking-uri") from err


def client(uri: str) -> MlflowClient:
    """An MLflow client bound to ``uri`` (never touches the global tracking URI)."""
    import_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def ensure_experiment(uri: str, name: str) -> str:
    """Create experiment ``name`` if missing and return its id.

    Call it from the driver before trials start: concurrent creation from several trial processes
    races (UNIQUE constraint failure, environment.md §7). A lost race is still handled here by
    re-reading. For sqlite, artifacts go to ``<db folder>/mlartifacts/<name>``, not to a path
    relative to whatever working directory the trial happens to run in.
    """
    uri = resolve_tracking_uri(uri)
    check_reachable(uri)
    if (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise PeftbenchError(
                f"MLflow experiment {name!r} exists but is deleted; restore it "
                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or pick another "
                f"experiment name"
            )
        return exp.experiment_id
    location = str(db.parent / "mlartifacts" / _safe_dirname(name)) if db is not None else None
    from mlflow.exceptions import MlflowException

    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:
        exp = c.get_experiment_by_name(name)  # another process won the race
        if exp is None:
            raise
        return exp.experiment_id


def iter_runs(c: MlflowClient, experiment_id: str, filter_string: str = "") -> list[Any]:
    """All runs (mlflow ``Run`` entities) of an experiment matching a filter, oldest first."""
    runs: list[Any] = []
    token = None
    while True:
        page = c.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000,
            order_by=["attributes.start_time ASC"], page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def finished_fingerprints(uri: str, experiment: str) -> set[str]:
    """Fingerprints of FINISHED runs (resume: skip these). A missing DB/experiment means none."""
    uri = resolve_tracking_uri(uri)
    if (db := sqlite_path(uri)) is not None and not db.is_file():
        return set()  # do not create an empty database just to look
    check_reachable(uri)
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        return set()
    runs = iter_runs(c, exp.experiment_id, "attributes.status = 'FINISHED'")
    return {fp for r in runs if (fp := r.data.tags.get("peftbench.fingerprint"))}


def flatten_config(cfg: dict, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config to ``{"a.b.c": "value"}`` with stringified values.

    Lists/tuples stay one value (JSON) so a param is one comparable cell in the MLflow UI; ``None``
    becomes ``"None"``.
    """
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, name))
        elif isinstance(value, (list, tuple, dict)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = str(value)
    return out


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrialRun:
    """One trial as one MLflow run; use inside the trial process.

    ``with TrialRun(...) as run:`` creates the run (tags, run name, flattened params); leaving the
    block marks it FINISHED, FAILED on an exception (error message as tag ``peftbench.error`` and a
    ``traceback.txt`` artifact) or KILLED on KeyboardInterrupt. Exceptions are never swallowed.
    With ``run_id`` it continues that run instead (a trial resumed from its checkpoint).
    """

    def __init__(
        self, uri: str, experiment: str, run_name: str, tags: dict[str, str],
        params: dict[str, Any], run_id: str | None = None,
    ) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.reopen = run_id            # an unfinished run to continue (a resume from a checkpoint)
        self.was_finished = False       # the reopened run had already FINISHED (killed after it ended)
        self._logged: set[tuple[str, int]] = set()  # (metric, step) already in a reopened run
        self.previous: Any = None       # the reopened run as it was (mlflow Run)
        self.experiment = experiment
        self.run_name = run_name
        self.tags = {str(k): _truncate(str(v), _MAX_TAG_VALUE) for k, v in tags.items()}
        self.params = flatten_config(params)
        self.run_id: str = ""
        self._client: MlflowClient | None = None

    def __enter__(self) -> TrialRun:
        exp_id = ensure_experiment(self.uri, self.experiment)
        self._client = client(self.uri)
        tags = {OWNER_TAG: this_process().token, **self.tags}
        if self.reopen:
            return self._reopen(tags)
        run = self._client.create_run(exp_id, tags=tags, run_name=self.run_name)
        self.run_id = run.info.run_id
        try:
            from mlflow.entities import Param

            items = [Param(k[:_MAX_KEY], _truncate(v, _MAX_PARAM_VALUE)) for k, v in self.params.items()]
            for i in range(0, len(items), _PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=items[i : i + _PARAMS_PER_BATCH])
        except BaseException as err:  # the run exists: whatever fails now (disk full, ...) closes it FAILED
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        c = self._require()
        if self.was_finished:
            return False  # nothing of it was run again
        if exc_type is None:
            status = "FINISHED"
        elif raised_by_interrupt(exc):  # Ctrl-C, Ray stopping the worker, or an error raised by either
            # an interrupt inside an MLflow write can leave sqlite locked (20 s, then an error): that
            # error must not replace the interrupt; the driver, or the next run, marks the run KILLED
            with contextlib.suppress(Exception):
                c.set_terminated(self.run_id, status="KILLED", end_time=_now_ms())
            return False
        else:
            status = "FAILED"
            # Best effort: a failure while recording the failure must not hide the real error.
            try:
                message = str(exc) if isinstance(exc, PeftbenchError) else f"{exc_type.__name__}: {exc}"
                c.set_tag(self.run_id, "peftbench.error", _truncate(message, _MAX_TAG_VALUE))
                text = "".join(traceback.format_exception(exc_type, exc, tb))
                c.log_text(self.run_id, text, "traceback.txt")
            except Exception:  # noqa: BLE001
                logging.getLogger(__name__).warning("could not log the error of run %s", self.run_id)
        c.set_terminated(self.run_id, status=status, end_time=_now_ms())
        return False

    def _reopen(self, tags: dict[str, str]) -> TrialRun:
        """Continue run ``self.reopen``: RUNNING again, owned by this process, its earlier error tag
        dropped; metrics it already holds (epochs before the kill) are not logged twice."""
        c = self._require()
        run = self.previous = c.get_run(self.reopen)
        self.run_id = run.info.run_id
        if run.info.status == "FINISHED":
            self.was_finished = True
            return self
        for key in ("peftbench.error", "peftbench.note"):
            if key in run.data.tags:
                c.delete_tag(self.run_id, key)
        for key, value in tags.items():
            c.set_tag(self.run_id, key, value)
        self._logged = {(key, m.step) for key in run.data.metrics for m in c.get_metric_history(self.run_id, key)}
        c.update_run(self.run_id, status="RUNNING")
        return self

    def _require(self) -> MlflowClient:
        if self._client is None:
            raise RuntimeError("TrialRun used outside its `with` block")
        return self._client

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = _now_ms()
        items = [Metric(str(k), float(v), ts, int(step)) for k, v in metrics.items()
                 if (str(k), int(step)) not in self._logged]
        for i in range(0, len(items), _METRICS_PER_BATCH):
            self._require().log_batch(self.run_id, metrics=items[i : i + _METRICS_PER_BATCH])

    def set_tag(self, key: str, value: str) -> None:
        self._require().set_tag(self.run_id, key, _truncate(str(value), _MAX_TAG_VALUE))

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        """Per-epoch metrics (``train/loss``, ``val/mIoU``, ...) at ``step`` = epoch, one batch."""
        self._log(metrics, step)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Final metrics (``test/*``, ``params/*``, ``eff/*``, ``time/*``), one batch, step 0."""
        self._log(metrics, 0)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags known only inside the trial (e.g. ``peftbench.split_source``)."""
        for key, value in tags.items():
            self._require().set_tag(self.run_id, str(key), _truncate(str(value), _MAX_TAG_VALUE))

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """A JSON/YAML-serialisable object as an artifact (format from the file suffix)."""
        self._require().log_dict(self.run_id, obj, artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Raw bytes (e.g. ``method_weights.pt``) as an artifact, written via a temp file."""
        folder, name = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory(prefix="peftbench-artifact-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self._require().log_artifact(self.run_id, str(path), folder or None)

    def log_file(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """An existing local file as an artifact under ``artifact_path`` (run root if None)."""
        self._require().log_artifact(self.run_id, str(path), artifact_path)
