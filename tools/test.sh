#!/usr/bin/env bash
# The test command: install everything needed, then run the whole suite
# against a real ZooKeeper server. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
exec .venv/bin/python -m pytest tests "$@"
