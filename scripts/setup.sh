#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs the pinned stack.
# Idempotent: a second run only checks that the pinned packages are present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.hiresd-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,cluster]"
  # k-diffusion (the pixel reference) without its training-only dependencies, at the pyproject pin
  .venv/bin/python -m pip install -q --no-deps $(.venv/bin/python -c "import tomllib; \
print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['kdiffusion-reference'])")
  echo "$want" > "$stamp"
fi
