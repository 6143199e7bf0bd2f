#!/usr/bin/env bash
# What the README's "Installing" reports: the wheel's size, and the time from `pip install` of the
# wheel (with its CPU dependencies, into a fresh venv) to the first finished trial of the built-in
# demo, run from an empty folder. Needs ~2 GB in $TMPDIR; the venv is removed afterwards. Prints
# `uptime` before and after: on a shared machine the load average says how far from idle it was.
# Usage: scripts/measure-install.sh   (PYTHON=python3.11 by default)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
py=${PYTHON:-python3.11}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "before: $(uptime)"
mkdir "$tmp/src" "$tmp/work"
git -C "$root" archive HEAD | tar -x -C "$tmp/src"     # committed files only: no build/ left in the checkout
"$py" -m pip wheel -q --no-deps -w "$tmp/dist" "$tmp/src" 2>&1 | { grep -v "is ignored" || true; }
wheel=$(ls "$tmp"/dist/peftbench-*.whl)
"$py" - "$wheel" <<'EOF'
import os, sys, zipfile
files = zipfile.ZipFile(sys.argv[1]).infolist()
print(f"wheel: {os.path.basename(sys.argv[1])} {os.path.getsize(sys.argv[1])} bytes, {len(files)} files, "
      f"{sum(f.file_size for f in files)} bytes unpacked")
EOF

start=$(date +%s)
"$py" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$wheel[suite]" torch==2.13.0 spconv==2.3.8 2>&1 | { grep -v "is ignored" || true; }
installed=$(date +%s)
echo "venv + pip install: $((installed - start)) s"
cd "$tmp/work"
"$tmp/venv/bin/peftbench" run demo > run.log 2>&1 &
run=$!
until grep -q '^\[1/' run.log; do
  if ! kill -0 "$run" 2>/dev/null; then cat run.log; echo "the run ended before a trial finished" >&2; exit 1; fi
  sleep 2
done
echo "first finished trial: $(($(date +%s) - start)) s after pip install began ($(($(date +%s) - installed)) s of it in peftbench run demo)"
grep -E '^\[1/|pretraining stage ready' run.log
kill "$run"; wait "$run" 2>/dev/null || true   # its watchdog takes the local Ray cluster down with it
echo "after: $(uptime)"
