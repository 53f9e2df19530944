#!/usr/bin/env bash
# Run examples/rotate_logs/rotate_logs.yaml with the dagtask CLI, end to end:
#
#   examples/run_yaml.sh [AGENT_HOME]
#
# Makes a demo agent home with three logs (AGENT_HOME, else a temporary folder), registers it as a
# host, then runs the template file with
#
#   dagtask run examples/rotate_logs/rotate_logs.yaml --set host_id=<id> --wait
#
# and lists the rotated logs. The database is $DAGTASK_DB_URL, else a temporary SQLite file.
# Everything temporary is removed on exit.
set -euo pipefail

# The template names its handlers examples.rotate_logs.ops...; `dagtask run` puts the current
# directory on sys.path, so run from the repository root.
cd "$(dirname "$0")/.."

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dagtask-yaml-example.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export DAGTASK_DB_URL="${DAGTASK_DB_URL:-sqlite:///$tmp/dagtask.db}"
agent_home=$(realpath -m "${1:-$tmp/agent-home}")

mkdir -p "$agent_home/log"
for name in ocp_agentd ocp_mgragent ocp_monagent; do
  printf '%s: heartbeat %d ok\n' "$name" 1 "$name" 2 "$name" 3 >> "$agent_home/log/$name.log"
done

# `hosts add` prints "host <id> added: ..."; a unique name lets the script run twice on one DB.
added=$(dagtask hosts add --name "yaml-demo-$$-$RANDOM" --ip 127.0.0.1 --agent-home "$agent_home")
echo "$added"
host_id=$(sed -n 's/^host \([0-9][0-9]*\) added.*/\1/p' <<<"$added")

dagtask run examples/rotate_logs/rotate_logs.yaml --set host_id="$host_id" --wait

echo "--- $agent_home/log after the task ---"
ls -l "$agent_home/log"
