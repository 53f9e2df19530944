"""Run the "Rotate agent logs" operation from its YAML template file, in Python.

    python examples/rotate_logs/run_yaml.py [--db URL] [--agent-home DIR]

The same as run.py, but the template comes from rotate_logs.yaml through ``load_template``.
The command-line way is ``dagtask run examples/rotate_logs/rotate_logs.yaml --set host_id=1
--wait`` (see examples/run_yaml.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The YAML names its handlers examples.rotate_logs.ops...: put the repository root on sys.path
# (Python adds only this script's folder), as `dagtask run` does with the current directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dagtask import Engine, TaskStatus, load_template
from examples._support import example_database
from examples.rotate_logs import demo, ops

TEMPLATE_FILE = Path(__file__).with_name("rotate_logs.yaml")


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the process exit code."""
    parser = demo.make_parser("Rotate the agent logs of a demo host (YAML template).")
    args = parser.parse_args(argv)
    template = load_template(TEMPLATE_FILE)
    with example_database(args.db) as url, demo.agent_home(args.agent_home) as home:
        demo.write_demo_logs(home)
        with Engine(url, workers=2) as engine:
            host = demo.register_host(engine, home)
            print(f"Host {host.id} ({host.name}), agent home {home}")
            print(f"Template {template.name!r} loaded from {TEMPLATE_FILE}")
            task = engine.run(template, args={ops.HOST_ID: str(host.id)}, timeout=120)
            demo.print_outcome(engine, task, home)
    return 0 if task.status is TaskStatus.SUCCESSFUL else 1


if __name__ == "__main__":
    sys.exit(main())
