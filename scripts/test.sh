#!/usr/bin/env bash
# Installs everything, starts a throwaway PostgreSQL, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
. .venv/bin/activate
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

# A private PostgreSQL cluster on a free port, owned by the postgres user, removed on exit.
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pgdir=$(mktemp -d /tmp/gridwatch-pg.XXXXXX)
pgport=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chown postgres "$pgdir" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
as_pg "$pgbin/initdb -D $pgdir/data -U gridwatch --auth=trust >/dev/null"
as_pg "$pgbin/pg_ctl -D $pgdir/data -o '-p $pgport -k $pgdir -c listen_addresses=127.0.0.1' -l $pgdir/log -w start >/dev/null"
trap 'as_pg "$pgbin/pg_ctl -D $pgdir/data -m immediate stop" >/dev/null 2>&1 || true; rm -rf "$pgdir"' EXIT
as_pg "$pgbin/createdb -h 127.0.0.1 -p $pgport -U gridwatch gridwatch_test"
export GRIDWATCH_TEST_POSTGRES_URL="postgresql+psycopg2://gridwatch@127.0.0.1:$pgport/gridwatch_test"

python -m pytest -q -rs -p no:cacheprovider "$@"
