#!/usr/bin/env bash
# The main job: install what is needed, start ZooKeeper, validate the bundled
# example configuration, run the daemons on it and show the pool.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
exec .venv/bin/python tools/quickstart.py "$@"
