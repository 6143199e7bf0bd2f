#!/usr/bin/env bash
# Speed measurements on one GPU (issue 12), from the repository root; results under $OUT (7 files):
# the trainer's step on fixed / new / repeated batch sizes (scripts/shape_probe.py), GEM and LoRA
# GPU-smoke trials with nvidia-smi sampling (scripts/trial_probe.py), spconv's backward against
# ours per level (scripts/conv_backward_bench.py, stage `conv`), the reference
# (scripts/reference_bench.py, checkout in $REF) and `peftbench bench` side by side (fp16, profiled;
# BF16=1 adds a bf16 run), and the reference identity (fp32, tiny and Sonata-size). STAGES picks the
# parts, run in this file's order (default: identity probe trials reference bench; `compile` adds the bench with
# --compile, `cprobe` / `ctrials` the shape probe / trials with train.compile), TRIALS="gem" picks
# the trials, METHODS / CMETHODS the bench's methods (short on device time), BS the batch sizes, STEPS the timed steps.
# Needs .gpu/spconv-cu126-py312.tar.xz (../shared/gpu/make-spconv-bundle.sh) and $REF (default
# .reference/sonata: facebookresearch/sonata, git-ignored).
set -u -o pipefail
OUT=${OUT:-/tmp/out}; REF=${REF:-.reference/sonata}; GPU_BUNDLE=${GPU_BUNDLE:-.gpu/spconv-cu126-py312.tar.xz}
mkdir -p "$OUT" /tmp/site
python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall('/tmp/site')" "$GPU_BUNDLE"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
LOG=$OUT/log.txt; F="USDT|is_fx_tracing|_warn_once|acc_events"; T0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"; }
has() { case " ${STAGES:-identity probe trials reference bench} " in *" $1 "*) return 0;; esac; return 1; }
has identity && stamp identity && timeout 100 python3 scripts/reference_identity.py --reference "$REF" --configs tiny sonata --device cuda --flash \
  --json "$OUT/ident.json" 2>&1 | grep -Ev "$F" | tail -15 | tee -a "$LOG"
has cidentity && stamp "identity, compiled" && timeout 300 python3 scripts/reference_identity.py --reference "$REF" --configs tiny \
  --device cuda --backends spconv --compile --json "$OUT/ident_compiled.json" 2>&1 | grep -Ev "$F" | tail -15 | tee -a "$LOG"
# the GPU smoke suite with spconv (conv_backend auto) and 12 loader workers
sed -e 's/conv_backend: torch/conv_backend: auto/' -e 's/num_workers: 2 /num_workers: 12 /' suites/gpu_smoke.yaml > /tmp/gpu_speed.yaml
sed -e 's/^  amp: true/  amp: true\n  compile: true/' /tmp/gpu_speed.yaml > /tmp/gpu_speed_c.yaml
probe() {  # $1: suite, $2: json suffix
  stamp "shape probe $2" && timeout 200 python3 scripts/shape_probe.py "$1" --batches 12 --workers 12 --json "$OUT/shape$2.json" 2>&1 \
    | grep -Ev "$F" | grep -v "^ops_" | tee -a "$LOG"
}
trials() {  # $1: suite, $2: json suffix
  for method in ${TRIALS:-gem lora}; do
    stamp "trial $method$2"
    timeout 200 python3 scripts/trial_probe.py "$1" --method $method --seed 0 --smi --json "$OUT/probe_$method$2.json" 2>&1 \
      | grep -Ev "$F" | grep -E "step_ms_median|eff/|time/|_pct" | tee -a "$LOG"
  done
}
has probe && probe /tmp/gpu_speed.yaml ""
has cprobe && probe /tmp/gpu_speed_c.yaml _compiled
has trials && trials /tmp/gpu_speed.yaml ""
has ctrials && trials /tmp/gpu_speed_c.yaml _compiled
has conv && stamp "conv backward" && timeout 120 python3 scripts/conv_backward_bench.py --json "$OUT/conv.json" 2>&1 \
  | grep -Ev "$F" | tee -a "$LOG"
COMMON="--points 102400 --batch-sizes ${BS:-1 3} --steps ${STEPS:-5}"
has reference && stamp reference && timeout 100 python3 scripts/reference_bench.py --reference "$REF" $COMMON --dtypes fp16 --json /tmp/ref.json 2>&1 | grep -Ev "$F" | tee -a "$LOG"
has bench && stamp "bench fp16" && timeout 220 python3 -m peftbench.cli bench --backbone sonata $COMMON --dtypes fp16 --profile \
  --methods ${METHODS:-frozen gem lora adapter prompt full} --report "$OUT/bench" --reference /tmp/ref.json 2>&1 | grep -Ev "$F" | tee -a "$LOG"
if has compile; then
  stamp "bench fp16, compiled"
  timeout 400 python3 -m peftbench.cli bench --backbone sonata $COMMON --dtypes fp16 --compile \
    --methods ${CMETHODS:-frozen gem} --out "$OUT/bench_compiled.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
fi
if [ -n "${BF16:-}" ]; then
  stamp "bench bf16"
  timeout 90 python3 -m peftbench.cli bench --backbone sonata $COMMON --dtypes bf16 --methods frozen gem full \
    --out /tmp/bench_bf16.json 2>&1 | grep -Ev "$F" | tee -a "$LOG"
fi
stamp done
