#!/usr/bin/env bash
# On the GPU machine (issue 3): reference identity (tiny and full Sonata, train/eval, flash path,
# gradients), the committed CPU fixture, and one full-size Sonata trial from a Sonata-format file.
# Needs, in the working tree: .gpu/spconv-cu126-py312.tar.xz (../shared/gpu/make-spconv-bundle.sh),
# .gpu/whl/ (pyyaml, addict, packaging wheels for cp312, used only if missing there) and the
# reference checkout in .reference/sonata. Results go to $OUT (at most 8 files come back).
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
python3 -c "import tarfile; tarfile.open('.gpu/spconv-cu126-py312.tar.xz').extractall('/tmp/site')"
for pkg in yaml:pyyaml addict:addict packaging:packaging; do
  python3 -c "import ${pkg%%:*}" 2>/dev/null || for w in .gpu/whl/${pkg#*:}-*.whl; do python3 -m zipfile -e "$w" /tmp/site; done
done
export PYTHONPATH=/tmp/site:$PWD
python3 - <<'EOF' 2>&1 | tee "$OUT/env.log"
import importlib.util, torch
print("torch", torch.__version__, torch.cuda.get_device_name(), "cuda", torch.version.cuda)
for m in ("spconv", "timm", "yaml", "addict", "packaging", "huggingface_hub", "flash_attn", "mlflow", "ray", "scipy"):
    print(m, "present" if importlib.util.find_spec(m) else "missing")
import spconv.pytorch  # noqa: F401
print("spconv.pytorch imports")
EOF
mkdir -p .cache
S=$(date +%s)
timeout 150 python3 scripts/reference_identity.py --configs tiny tiny-dec --flash --grad \
  --fixture "$OUT/ptv3_reference_tiny.pt" --sonata-checkpoint .cache/sonata_random.pth \
  --json "$OUT/identity_tiny.json" 2>&1 | grep -v is_fx_tracing | tee "$OUT/identity.log"
echo "identity tiny: $(( $(date +%s) - S )) s" | tee -a "$OUT/identity.log"
S=$(date +%s)
timeout 200 python3 -m peftbench.cli train suites/sonata_gpu.yaml --method gem --seed 0 --out /tmp/trial \
  2>&1 | tee "$OUT/trial.log"
echo "trial: $(( $(date +%s) - S )) s" | tee -a "$OUT/trial.log"
cp /tmp/trial/*/result.json "$OUT/trial_result.json" 2>/dev/null
cp /tmp/trial/*/config.json "$OUT/trial_config.json" 2>/dev/null
S=$(date +%s)
timeout 220 python3 scripts/reference_identity.py --configs sonata sonata-dec --flash --grad \
  --json "$OUT/identity_sonata.json" 2>&1 | grep -v is_fx_tracing | tee -a "$OUT/identity.log"
echo "identity sonata: $(( $(date +%s) - S )) s" | tee -a "$OUT/identity.log"
