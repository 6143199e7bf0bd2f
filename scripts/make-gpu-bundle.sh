#!/usr/bin/env bash
# Builds .gpu/ray-mlflow-py312.tar.xz in the current git checkout: Ray Tune 2.60, mlflow-skinny 3.17.2
# with sqlalchemy + alembic (enough for a sqlite tracking store) and pyyaml, unpacked for Python 3.12
# (the GPU machine's Python), for scripts/gpu-run.sh to unpack into /tmp/site there.
#
# Left out: what the GPU machine's image already has and must not be shadowed (numpy, pandas, pyarrow,
# python-dateutil; tzdata is only needed by a newer python-dateutil) and the parts of the ray wheel that
# a local Ray Tune run never loads: ray/jars (Java workers), the dashboard's web client, rllib, serve, llm.
# Small pure-Python dependencies are kept even where the image has its own copy, so that the bundle is
# the set pip resolved together. Needs about 700 MB in $TMPDIR and 1-3 minutes (mostly xz).
# Before packing it checks that every Requires-Dist of every bundled distribution (ray with [tune]) is in
# the bundle or in the GPU machine's set above, and that every compiled file is CPython 3.12 x86-64.
# Usage: scripts/make-gpu-bundle.sh [--force]
# (BUNDLE_PYTHON_VERSION=3.11 BUNDLE_OUT=/tmp/x.tar.xz builds the same for another Python, to test on CPU.)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
pyver=${BUNDLE_PYTHON_VERSION:-3.12}; cp=cp${pyver/./}
out=${BUNDLE_OUT:-"$root/.gpu/ray-mlflow-py${pyver/./}.tar.xz"}
if [ -s "$out" ] && [ "${1:-}" != "--force" ]; then echo "already there: .gpu/$(basename "$out") (--force rebuilds)"; exit 0; fi
mkdir -p "$root/.gpu" "$(dirname "$out")"
grep -qxF '/.gpu/' "$root/.git/info/exclude" 2>/dev/null || { mkdir -p "$root/.git/info"; echo '/.gpu/' >> "$root/.git/info/exclude"; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

python3 -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp/whl" 'ray[tune]==2.60.0' 'mlflow-skinny==3.17.2' sqlalchemy alembic pyyaml 2>&1 \
  | grep -v "is ignored: it is neither" || true

# Provided by the GPU machine (torch's scientific stack): never shadow them from /tmp/site.
exclude='^(numpy|pandas|pyarrow|python_dateutil|tzdata)-'
exclude_names=numpy,pandas,pyarrow,python-dateutil,tzdata
mkdir "$tmp/site"
wheels=()
for w in "$tmp"/whl/*.whl; do
  name=$(basename "$w")
  if [[ "$name" =~ $exclude ]]; then echo "skip  $name (on the GPU machine)"; continue; fi
  case "$name" in *-$cp-*|*-abi3-*|*-none-any.whl) ;; *) echo "not for $cp: $name" >&2; exit 1 ;; esac
  wheels+=("$w")
done
# Unzip keeping the executable bits (`python -m zipfile -e` drops them, and Ray then cannot start
# ray/core/src/ray/gcs/gcs_server or raylet: "Permission denied").
python3 - "$tmp/site" "${wheels[@]}" <<'PYEOF'
import os, sys, zipfile
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, sys.argv[1])
            if not info.is_dir() and (info.external_attr >> 16) & 0o111:
                os.chmod(path, 0o755)
PYEOF
for exe in ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server; do
  [ -x "$tmp/site/$exe" ] || { echo "not executable after unpacking: $exe" >&2; exit 1; }
done

# Big optional parts of ray that local Ray Tune (include_dashboard=False) never loads.
# Kept: ray/core (raylet, gcs_server), ray/_private (incl. the runtime-env agent's aiohttp),
# ray/dashboard's Python modules (the dashboard agent), ray/data (ray.air imports it), ray/train.
echo "pruned from ray:"; du -sh "$tmp/site/ray/jars" "$tmp/site/ray/dashboard/client" "$tmp/site/ray/rllib" \
  "$tmp/site/ray/serve" "$tmp/site/ray/llm" | sed 's/^/  /'
rm -rf "$tmp/site/ray/jars" "$tmp/site/ray/dashboard/client" "$tmp/site/ray/rllib" "$tmp/site/ray/serve" \
  "$tmp/site/ray/llm"
find "$tmp/site" -type d \( -name examples -path '*/ray/*' \) -prune -exec rm -rf {} +
find "$tmp/site" -name __pycache__ -type d -prune -exec rm -rf {} +

echo "biggest parts (unpacked):"; du -s "$tmp"/site/* | sort -rn | head -8 | awk '{printf "  %6.1f MB %s\n", $1/1024, $2}' \
  | sed "s|$tmp/site/||"
echo "unpacked: $(du -sh "$tmp/site" | cut -f1), $(ls -d "$tmp"/site/*.dist-info | wc -l) distributions"
cat > "$tmp/check.py" <<'PYEOF'
"""Checks an unpacked site folder: every Requires-Dist (markers for CPython on x86-64 Linux, ray's
[tune] extra) is met by a distribution in the folder (version included) or is one the GPU machine
provides; every ELF file (extensions, raylet, gcs_server) is x86-64 and every extension is for this
CPython version. argv: site folder, comma-separated provided names, Python version."""
import email.parser, pathlib, struct, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
from pip._vendor.packaging.version import Version

site, provided, pyver = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
provided = {canonicalize_name(n) for n in provided.split(",")}
tag = "cpython-" + pyver.replace(".", "") + "-x86_64-linux-gnu"
extras = {"ray": ["tune"]}
env = {"python_version": pyver, "python_full_version": pyver + ".3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix"}
dists = {}
for d in site.glob("*.dist-info"):
    meta = email.parser.Parser().parsestr((d / "METADATA").read_text(errors="replace"))
    dists[canonicalize_name(meta["Name"])] = (Version(meta["Version"]), meta.get_all("Requires-Dist") or [])
problems, from_gpu = [], {}
for name, (version, reqs) in sorted(dists.items()):
    for line in reqs:
        req = Requirement(line)
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in ["", *extras.get(name, [])]):
            continue
        dep = canonicalize_name(req.name)
        if dep in dists:
            if req.specifier and not req.specifier.contains(dists[dep][0], prereleases=True):
                problems.append(f"{name}: needs {line}, the bundle has {dep} {dists[dep][0]}")
        elif dep in provided:
            from_gpu.setdefault(dep, set()).add(f"{name} {req.specifier or '(any)'}")
        else:
            problems.append(f"{name}: needs {line}: MISSING")
for path in site.rglob("*"):
    if not path.is_file() or path.is_symlink():
        continue
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        continue
    if struct.unpack("<H", head[18:20])[0] != 62:
        problems.append(f"{path.relative_to(site)}: not x86-64")
    if ".cpython-" in path.name and tag not in path.name:
        problems.append(f"{path.relative_to(site)}: not {tag}")
print(f"checked {len(dists)} distributions; taken from the GPU machine:")
for dep, who in sorted(from_gpu.items()):
    print(f"  {dep:<16} for {'; '.join(sorted(who))}")
for line in problems:
    print("PROBLEM:", line)
sys.exit(1 if problems else 0)
PYEOF
python3 "$tmp/check.py" "$tmp/site" "${exclude_names}" "$pyver"
tar -C "$tmp/site" -cf - . | xz -6 -T2 > "$out.part"
mv "$out.part" "$out"
ls -la "$out"
echo "size: $(( $(stat -c %s "$out") / 1048576 )) MiB (limit per command: 64 MiB with the working tree)"
