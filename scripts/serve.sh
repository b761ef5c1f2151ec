#!/usr/bin/env bash
# Installs the serving dependencies (no torch) and starts the service on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh base
exec .venv/bin/gridwatch serve "$@"
