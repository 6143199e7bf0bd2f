#!/usr/bin/env bash
# Runs a peftbench suite on a GPU machine (issue 6) and leaves what a report needs in $OUT.
#
#   scripts/gpu-run.sh SUITE [--gpus N] [--tag NAME] [extra `peftbench run` arguments]
#
# From the repository root of the copy on the GPU machine (Python 3.12 + torch, no ray/mlflow):
#  1. unpacks every .gpu/*.tar.xz (scripts/make-gpu-bundle.sh's Ray + MLflow bundle; spconv's too, if
#     it is there) into /tmp/site, once per bundle: a still-warm machine keeps them between commands;
#  2. PYTHONPATH=/tmp/site:<repo> (peftbench runs from the tree, no pip install), RAY_AUTH_MODE=disabled;
#  3. `--gpus N` (or GPU_RUN_GPUS=N) shows the run only GPUs 0..N-1 (CUDA_VISIBLE_DEVICES), e.g. the
#     one-GPU baseline on a two-GPU machine;
#  4. checks the imports, samples nvidia-smi every second, runs `python3 -m peftbench.cli run SUITE`
#     with a fresh sqlite MLflow store under /tmp (so every trial runs), stopped with SIGINT after
#     GPU_RUN_TIMEOUT seconds (default 540: the device tool allows 600 per command; lower it when one
#     command runs several suites) so that whatever finished still comes back;
#  5. writes $OUT/<tag>/summary.json (wall clock, Tune span, per-trial GPU placement, duration, peak
#     memory, per-GPU busy time and utilisation), run.log (all output) and records.tar.gz (mlflow.db,
#     Ray's per-trial result.json/params.json/progress.csv/error.txt, placement.json, MLflow artifacts
#     without weights, nvidia-smi samples, versions, Ray logs on failure). Three files per run: the
#     device tool brings back at most 8 files, 2 folders deep.
# <tag> defaults to <suite file stem>-<N>gpu. Exit status: peftbench's (124/130 after the timeout).
# Settings: GPU_RUN_BUNDLES (which bundles to unpack, default .gpu/*.tar.xz), GPU_RUN_SITE (default
# /tmp/site), GPU_RUN_PYTHON (default python3), OUT (default .cache/gpu-out, for a local test).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$PWD
usage() { sed -n '2,4p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
suite=$1; shift
[ -f "$suite" ] || { echo "gpu-run: no suite file $suite" >&2; exit 2; }
gpus=${GPU_RUN_GPUS:-}; tag=${GPU_RUN_TAG:-}; extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --gpus|--baseline-gpus) gpus=$2; shift 2 ;;
    --gpus=*|--baseline-gpus=*) gpus=${1#*=}; shift ;;
    --tag) tag=$2; shift 2 ;;
    --tag=*) tag=${1#*=}; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done
SITE=${GPU_RUN_SITE:-/tmp/site}
PY=${GPU_RUN_PYTHON:-python3}
OUT=${OUT:-$repo/.cache/gpu-out}
LIMIT=${GPU_RUN_TIMEOUT:-540}
have_smi=0; command -v nvidia-smi >/dev/null 2>&1 && have_smi=1
total_gpus=0; [ $have_smi = 1 ] && total_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ -n "$gpus" ]; then
  [ "$gpus" -le "$total_gpus" ] 2>/dev/null || { echo "gpu-run: --gpus $gpus but this machine shows $total_gpus GPU(s)" >&2; exit 2; }
  export CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1)))
else
  gpus=$total_gpus
  [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && gpus=$(awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES")
fi
stem=$(basename "$suite"); stem=${stem%.*}
tag=${tag:-$stem-${gpus}gpu}
work=/tmp/peftbench-gpu/$tag-$(date +%s)
dest=$OUT/$tag
mkdir -p "$work/records" "$dest" "$SITE" || exit 2
log=$dest/run.log
say() { echo "gpu-run: $*" | tee -a "$log"; }
: > "$log"

# 1. bundles -> $SITE, once each (a stamp holds the bundle's checksum)
t0=$(date +%s.%N)
for bundle in ${GPU_RUN_BUNDLES:-.gpu/*.tar.xz}; do
  [ -f "$bundle" ] || continue
  stamp="$SITE/.unpacked-$(basename "$bundle")"
  sum=$(cksum < "$bundle")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then say "already unpacked: $bundle"; continue; fi
  if tar -C "$SITE" -xJf "$bundle" 2>/dev/null || "$PY" -c 'import sys, tarfile
with tarfile.open(sys.argv[1]) as t: t.extractall(sys.argv[2], filter="fully_trusted")' "$bundle" "$SITE"; then
    echo "$sum" > "$stamp"; say "unpacked $bundle into $SITE"
  else say "FAILED to unpack $bundle"; exit 3; fi
done
# Ray's own servers must be executable (a bundle unzipped without modes would leave them 644)
[ -d "$SITE/ray/core/src" ] && find "$SITE/ray/core/src" -type f ! -name '*.py' -exec chmod +x {} +
say "bundles ready in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s"

# 2. environment
export PYTHONPATH="$SITE:$repo${PYTHONPATH:+:$PYTHONPATH}"
# (bytecode stays on: the bundle has no __pycache__, and the driver's first import caches it for the workers)
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
export MPLBACKEND=Agg
{
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  suite: $suite  tag: $tag  gpus: $gpus (of $total_gpus)"
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}  PYTHONPATH=$PYTHONPATH  nproc=$(nproc)"
  [ $have_smi = 1 ] && nvidia-smi && nvidia-smi -L
  df -h /dev/shm /tmp 2>/dev/null
  "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for name in ["torch", "numpy", "pandas", "pyarrow", "protobuf:google.protobuf", "pydantic", "ray", "mlflow",
             "sqlalchemy", "alembic", "yaml", "packaging", "typing_extensions", "spconv"]:
    dist, _, mod = name.partition(":")
    try:
        m = importlib.import_module(mod or dist)
        print(f"  {dist:<18} {getattr(m, '__version__', '?'):<14} {getattr(m, '__file__', '')}")
    except Exception as err:  # report, don't stop
        print(f"  {dist:<18} MISSING ({type(err).__name__}: {err})")
try:
    import torch
    print("  torch cuda", torch.version.cuda, "devices", torch.cuda.device_count(),
          [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
except Exception as err:
    print("  torch cuda check failed:", err)
EOF
} > "$work/env.txt" 2>&1
cat "$work/env.txt" >> "$log"
grep -E "^  (torch|ray|mlflow|pyarrow|spconv|sqlalchemy) |torch cuda" "$work/env.txt"

if ! "$PY" -c "import ray, ray.tune, mlflow, sqlalchemy, alembic, pyarrow.fs, peftbench.tune, peftbench.cli
from mlflow.tracking import MlflowClient" >> "$log" 2>&1; then
  say "imports FAILED (see run.log); is .gpu/ray-mlflow-py312.tar.xz carried? (scripts/make-gpu-bundle.sh)"
  tail -20 "$log"
  cp "$work/env.txt" "$dest/" 2>/dev/null
  exit 3
fi

# 3. nvidia-smi samples (every second, epoch-stamped) while the suite runs
samplers=()
if [ $have_smi = 1 ]; then
  ( while :; do t=$(date +%s.%N)
      nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used --format=csv,noheader,nounits 2>/dev/null | sed "s/^/$t, /"
      sleep 1; done ) > "$work/gpu-util.csv" &
  samplers+=($!)
  ( while :; do t=$(date +%s.%N)
      nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits 2>/dev/null | sed "s/^/$t, /"
      sleep 2; done ) > "$work/gpu-apps.csv" &
  samplers+=($!)
fi

# 4. the suite
uri="sqlite:///$work/mlflow.db"
say "running: timeout -s INT $LIMIT $PY -m peftbench.cli --debug run $suite --tracking-uri $uri ${extra[*]:-}"
touch "$work/.start"
start=$(date +%s.%N)
( time timeout -s INT -k 40 "$LIMIT" "$PY" -m peftbench.cli --debug run "$suite" --tracking-uri "$uri" "${extra[@]}" ) 2>&1 \
  | tee -a "$log"
rc=${PIPESTATUS[0]}
end=$(date +%s.%N)
for pid in "${samplers[@]}"; do kill "$pid" 2>/dev/null; done
wall=$(awk "BEGIN{printf \"%.1f\", $end - $start}")
say "peftbench exit $rc after $wall s"

# 5. records: Ray's per-trial files (no checkpoints), placement.json, MLflow artifacts without weights
raydir=$(grep -o 'Ray experiment folder: .*' "$log" | tail -1 | sed 's/^Ray experiment folder: //')
if [ -z "$raydir" ] || [ ! -d "$raydir" ]; then
  raydir=$(find .cache/peftbench/ray -mindepth 1 -maxdepth 1 -type d -newer "$work/.start" 2>/dev/null | sort | tail -1)
fi
if [ -n "$raydir" ] && [ -d "$raydir" ]; then
  mkdir -p "$work/records/ray"
  (cd "$raydir" && find . -maxdepth 2 -type f \( -name result.json -o -name params.json -o -name error.txt \
      -o -name progress.csv -o -name placement.json \) -print0 | xargs -0r cp --parents -t "$work/records/ray")
  say "Ray records from $raydir: $(find "$work/records/ray" -name result.json | wc -l) trials"
else
  say "no Ray experiment folder found under .cache/peftbench/ray"
fi
if [ -d "$work/mlartifacts" ]; then
  (cd "$work" && find mlartifacts -type f ! -name '*.pt' ! -name '*.pth' -size -2M -print0 \
      | xargs -0r cp --parents -t "$work/records")
fi
if [ "$rc" != 0 ] && [ -d /tmp/ray/session_latest/logs ]; then
  mkdir -p "$work/records/ray-logs"
  for f in /tmp/ray/session_latest/logs/*.err /tmp/ray/session_latest/logs/*.log /tmp/ray/session_latest/logs/raylet.out; do
    [ -s "$f" ] && tail -c 100000 "$f" > "$work/records/ray-logs/$(basename "$f")"
  done
fi

# 6. summary
"$PY" - "$work" "$tag" "$wall" "$rc" "$gpus" "$suite" "$start" > "$dest/summary.txt" 2>&1 <<'EOF'
"""summary.json: wall clock, Tune span, per trial (MLflow status, GPU placement, times, peak memory),
per GPU (trials, busy time, idle time while trials still waited, nvidia-smi utilisation). Times are epoch
seconds; a trial's interval is Ray's (scheduler start -> completion) where placement.json has it, else
its MLflow run's (which opens after the worker's start and imports)."""
import csv, glob, json, os, sqlite3, sys
work, tag, wall, rc, gpus, suite, t_cmd = sys.argv[1:8]
t_cmd = float(t_cmd)
summary = {"tag": tag, "suite": suite, "exit_status": int(rc), "wall_s": float(wall), "gpus_visible": int(gpus or 0),
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
trials = []
db = os.path.join(work, "mlflow.db")
if os.path.isfile(db):
    con = sqlite3.connect(db)
    for run_id, name, status, t0, t1 in con.execute(
            "SELECT run_uuid, name, status, start_time, end_time FROM runs ORDER BY start_time"):
        tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid=?", (run_id,)))
        mets = dict(con.execute("SELECT key, value FROM latest_metrics WHERE run_uuid=?", (run_id,)))
        trials.append({"run": name, "status": status,
                       "mlflow_start": t0 / 1000 if t0 else None, "mlflow_end": t1 / 1000 if t1 else None,
                       "gpu_ids": tags.get("peftbench.gpu_ids"), "gpu_uuid": tags.get("peftbench.gpu_uuid"),
                       "cuda_visible_devices": tags.get("peftbench.cuda_visible_devices"),
                       "pid": tags.get("peftbench.pid"),
                       **{k: round(mets[k], 3) for k in ("eff/peak_mem_mb", "eff/step_time_ms", "time/train_s",
                                                          "eff/latency_ms", "test/mIoU") if k in mets}})
summary["mlflow_runs"] = len(trials)
summary["mlflow_status"] = {s: sum(t["status"] == s for t in trials) for s in sorted({t["status"] for t in trials})}
place = {}
for path in glob.glob(os.path.join(work, "records/ray/**/placement.json"), recursive=True):
    place = json.load(open(path))
for t in trials:
    p = place.get(t["run"], {})
    t.update({"ray_status": p.get("status"), "resources": p.get("resources"),
              "start": p.get("start_epoch") or t["mlflow_start"], "end": p.get("end_epoch") or t["mlflow_end"],
              "times_from": "ray" if p.get("start_epoch") else "mlflow"})
    t["gpu_ids"] = t["gpu_ids"] or p.get("placement/gpu_ids") or "none"
    t["duration_s"] = round(t["end"] - t["start"], 1) if t["start"] and t["end"] else None
    if t["mlflow_start"] and t["start"]:
        t["startup_s"] = round(t["mlflow_start"] - t["start"], 1)  # worker start + imports before the run opened
done = [t for t in trials if t["start"] and t["end"]]
def union(iv):
    total, cur = 0.0, None
    for a, b in sorted(iv):
        if cur is None or a > cur[1]:
            total += 0 if cur is None else cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    return total + (cur[1] - cur[0] if cur else 0)
per_gpu = {}
if done:
    first, last_start, last_end = min(t["start"] for t in done), max(t["start"] for t in done), max(t["end"] for t in done)
    summary.update({"setup_s": round(first - t_cmd, 1), "tune_span_s": round(last_end - first, 1),
                    "teardown_s": round(t_cmd + float(wall) - last_end, 1),
                    "sum_trial_s": round(sum(t["duration_s"] for t in done), 1),
                    "mean_trial_s": round(sum(t["duration_s"] for t in done) / len(done), 1)})
    peaks = [t["eff/peak_mem_mb"] for t in done if "eff/peak_mem_mb" in t]
    if peaks:
        summary["peak_mem_mb_max"] = max(peaks)
    for t in done:
        per_gpu.setdefault(t["gpu_ids"], []).append((t["start"], t["end"]))
    for g, iv in sorted(per_gpu.items()):
        waiting = [(max(a, first), min(b, last_start)) for a, b in iv if a < last_start]
        per_gpu[g] = {"trials": len(iv), "busy_s": round(union(iv), 1),
                      "max_concurrent": max(sum(a <= s < b for a, b in iv) for s, _ in iv),
                      "idle_while_trials_waited_s": round(max(0.0, (last_start - first) - union(waiting)), 1)}
util = os.path.join(work, "gpu-util.csv")
if os.path.isfile(util) and done:
    t_a, t_b = min(t["start"] for t in done), max(t["end"] for t in done)
    samples = {}
    for row in csv.reader(open(util)):
        try:
            ts, idx, uuid, u, mem = float(row[0]), row[1].strip(), row[2].strip(), float(row[3]), float(row[4])
        except (ValueError, IndexError):
            continue
        if t_a <= ts <= t_b:
            samples.setdefault(idx, []).append((u, mem, uuid))
    summary["nvidia_smi_during_trials"] = {
        idx: {"uuid": s[0][2], "mean_util_pct": round(sum(x[0] for x in s) / len(s), 1),
              "share_of_samples_below_5pct": round(sum(x[0] < 5 for x in s) / len(s), 3),
              "max_mem_used_mb": max(x[1] for x in s), "samples": len(s)} for idx, s in sorted(samples.items())}
summary["per_gpu"] = per_gpu
summary["trials"] = trials
json.dump(summary, open(os.path.join(work, "summary.json"), "w"), indent=1, default=str)
print(f"== {tag}: exit {rc}, wall {wall} s = setup {summary.get('setup_s')} + Tune span {summary.get('tune_span_s')} "
      f"+ teardown {summary.get('teardown_s')}; {summary['mlflow_runs']} MLflow runs {summary['mlflow_status']}; "
      f"mean trial {summary.get('mean_trial_s')} s")
for t in trials:
    print(f"  {t['run']:<34} {t['status']:<8} gpu {t['gpu_ids']:<4} {str(t['duration_s']):>6} s "
          f"(+{t.get('startup_s', '?')} s start) peak {t.get('eff/peak_mem_mb', '?')} MB, "
          f"step {t.get('eff/step_time_ms', '?')} ms, mIoU {t.get('test/mIoU', '?')}")
for g, p in per_gpu.items():
    print(f"  GPU {g}: {p}")
for g, u in summary.get("nvidia_smi_during_trials", {}).items():
    print(f"  nvidia-smi GPU {g}: {u}")
EOF
cat "$dest/summary.txt" | tee -a "$log"
cp "$work/summary.json" "$dest/summary.json" 2>/dev/null
rm -f "$dest/summary.txt"
tar -C "$work" -czf "$dest/records.tar.gz" --exclude=./mlartifacts --exclude=./.start . 2>>"$log"
ls -la "$dest" | tee -a "$log"
exit "$rc"
