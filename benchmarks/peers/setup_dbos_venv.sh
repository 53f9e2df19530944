#!/usr/bin/env bash
# Create (or reuse) a separate virtual environment with DBOS Transact for the optional peer
# benchmark. Usage: bash benchmarks/peers/setup_dbos_venv.sh [VENV_PATH]   (default /tmp/dbos-venv)
# Idempotent: an existing venv is reused, and pip only installs what is missing. The project's
# own venv is never touched. Set DBOS_SPEC to pin another version (default: dbos 3.4.x).
set -euo pipefail

VENV="${1:-/tmp/dbos-venv}"
PYTHON="${PYTHON:-python3}"
SPEC="${DBOS_SPEC:-dbos>=3.4,<3.5}"
FALLBACK="dbos>=3,<4"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating venv at $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
else
    echo "reusing venv at $VENV"
fi

"$VENV/bin/python" -m pip install --quiet --upgrade pip
# psycopg (v3, binary) is what DBOS uses for PostgreSQL; SQLite needs nothing more.
if ! "$VENV/bin/python" -m pip install --quiet "$SPEC" "psycopg[binary]"; then
    echo "could not install '$SPEC'; trying the newest 3.x ('$FALLBACK')" >&2
    "$VENV/bin/python" -m pip install --quiet "$FALLBACK" "psycopg[binary]"
fi

"$VENV/bin/python" -c 'import importlib.metadata as m; print("dbos", m.version("dbos"), "installed")'
echo "run: $VENV/bin/python benchmarks/peers/dbos_bench.py --help"
