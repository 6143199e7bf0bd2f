#!/usr/bin/env bash
# Creates .venv with everything peftbench needs on a CPU machine (about a minute on a fresh clone).
# --no-compile: byte-compiling torch, Ray and MLflow at install took ~60 of 115 s on 2 cores; Python
# compiles the modules actually imported on first use instead.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q --no-compile -r requirements.txt 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
# Triton for the tests only (its interpreter runs our Triton kernels on CPU; tests/conftest.py puts it on the
# path): installed into the venv, torch._dynamo would import it into every training process (~0.1 GB).
[ -d .venv/triton-tests/triton ] || .venv/bin/python -m pip install -q --no-compile --no-deps \
  --target .venv/triton-tests triton==3.7.1 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, peftbench, ray, mlflow; print('peftbench ready: torch', torch.__version__)"
