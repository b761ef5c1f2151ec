#!/usr/bin/env bash
# Installs the serving dependencies (no torch) and starts the service on embedded defaults.
# The install runs in the repository; the service runs where this script was called from,
# so its data (gridwatch-data/: database, evidence) lands where the user is. Run from the
# repository root, that folder is git-ignored.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
(cd "$root" && scripts/install.sh base)
exec "$root/.venv/bin/gridwatch" serve "$@"
