#!/bin/sh
# build-wheelhouse.sh SOURCE OUT [LOCAL_VERSION]: wheels of meshcore (from the checkout SOURCE) and of
# every dependency into OUT, for hosts without internet (`pip install --no-index --find-links`).
# Run it with the Python the hosts have (Debian bookworm: 3.11): PYTHON=/path/to/python3.11.
# LOCAL_VERSION adds a PEP 440 local version (0.1.0 -> 0.1.0+LOCAL_VERSION), e.g. to roll a rebuild.
# The checkout is copied first, so the build leaves nothing behind in it. OUT is replaced atomically.
set -eu
src=$1
out=$2
local_version=${3:-}
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -C "$src" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md meshcore | tar -C "$tmp" -xf -
if [ -n "$local_version" ]; then
    sed -i -E "s/^version = \"([^\"+]+)[^\"]*\"/version = \"\\1+$local_version\"/" "$tmp/pyproject.toml"
fi
rm -rf "$out.tmp"
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$out.tmp" "$tmp"
rm -rf "$out"
mv "$out.tmp" "$out"
ls "$out"/meshcore-*.whl
