#!/usr/bin/env bash
# Sets up the environment (first run: about 2 minutes) and starts the server on 127.0.0.1:7860.
# Extra arguments go to `python -m server` (see `--help`), e.g. --models-dir /path/to/models, or
# --workers 2 for two worker replicas on a local Ray Serve cluster (docs/operating.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m server "$@"
