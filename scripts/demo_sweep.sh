#!/usr/bin/env bash
# The sweep behind the demo's settings: variants of suites/demo.yaml, each method x seed a
# `peftbench train --out` trial on one CPU thread, all cores busy; prints test mIoU per
# (variant, method, seed) and writes them to $OUT/sweep.csv. Runs where there are many cores (the
# GPU machine's 16 CPUs, with CUDA hidden); needs neither Ray nor MLflow.
#
#   OUT=/tmp/sweep VARIANTS="base: lr6:lr=0.006 e32:epochs=32,eval_every=16" METHODS="linear gem" SEEDS="0 1 2 3" bash scripts/demo_sweep.sh
set -euo pipefail
OUT=${OUT:?set OUT}; mkdir -p "$OUT"
VARIANTS=${VARIANTS:-"base:"}
METHODS=${METHODS:-"linear gem"}
SEEDS=${SEEDS:-"0 1 2 3"}
JOBS=${JOBS:-$(nproc)}
PY=${PYTHON:-python3}
export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for v in $VARIANTS; do  # name:key=value,... (train settings)
  name=${v%%:*}; over=${v#*:}
  $PY - "$name" "$over" "$OUT" "$SEEDS" <<'PY'
import sys, yaml
name, over, out, seeds = sys.argv[1:5]
suite = yaml.safe_load(open("suites/demo.yaml"))
suite["train"].update({k: yaml.safe_load(v) for k, v in (kv.split("=") for kv in over.split(",") if kv)})
suite["name"], suite["seeds"] = f"demo-{name}", [int(s) for s in seeds.split()]
yaml.safe_dump(suite, open(f"{out}/{name}.yaml", "w"), sort_keys=False)
PY
done
first=${VARIANTS%% *}; first=${first%%:*}; m0=${METHODS%% *}; s0=${SEEDS%% *}
# One trial alone first: it generates the data and the cached pretraining stage the others share.
$PY -m peftbench -q train "$OUT/$first.yaml" --method "$m0" --seed "$s0" --out "$OUT/$first/$m0-$s0" > "$OUT/$first-$m0-$s0.log" 2>&1
for v in $VARIANTS; do n=${v%%:*}; for m in $METHODS; do for s in $SEEDS; do
  [ "$n/$m-$s" = "$first/$m0-$s0" ] || echo "$n $m $s"; done; done; done |
  xargs -P "$JOBS" -L 1 sh -c '$0 -m peftbench -q train "$1/$2.yaml" --method "$3" --seed "$4" --out "$1/$2/$3-$4" > "$1/$2-$3-$4.log" 2>&1 || echo "FAILED $2 $3 $4"' "$PY" "$OUT"
$PY - "$OUT" <<'PY'
import json, sys, pathlib, collections, statistics as st
out = pathlib.Path(sys.argv[1]); rows = []
for f in sorted(out.glob("*/*/*/result.json")):
    r = json.loads(f.read_text()); v, ms = f.parts[-4], f.parts[-3]
    if f.parent.name != "pretrain" and r["status"] == "FINISHED" and "test/mIoU" in r["metrics"]:
        m, s = ms.rsplit("-", 1); rows.append((v, m, int(s), 100 * r["metrics"]["test/mIoU"]))
(out / "sweep.csv").write_text("variant,method,seed,test_miou\n" + "".join(f"{v},{m},{s},{x:.2f}\n" for v, m, s, x in rows))
by = collections.defaultdict(dict)
for v, m, s, x in rows: by[(v, m)][s] = x
for (v, m), d in sorted(by.items()):
    xs = [d[s] for s in sorted(d)]; base = by.get((v, "linear"), {})
    gaps = [d[s] - base[s] for s in sorted(d) if s in base]
    print(f"{v:8s} {m:8s} mean {st.mean(xs):5.1f} sd {st.pstdev(xs):4.1f} | " + " ".join(f"{x:5.1f}" for x in xs)
          + ("  gaps " + " ".join(f"{g:+.1f}" for g in gaps) if m != "linear" and gaps else ""))
PY
