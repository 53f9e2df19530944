"""The handlers of examples/ops.yaml: check a list of nodes, one fan-out copy per node.

Plain functions are handlers (used as ``execute``); the template names them by dotted path,
``examples.ops_steps.check_node``, which imports from the repository root.
"""

from __future__ import annotations

from dagtask import RunContext


def check_node(ctx: RunContext) -> dict[str, str]:
    """Check one node (``listMap.node_ids[parallelIdx]``); ``stringMap.k`` is a setting for all."""
    node = ctx.get("node_id")  # in a fan-out copy: listMap["node_ids"][parallelIdx]
    ctx.log.info("checking node %s (k=%s)", node, ctx.string_map.get("k", "unset"))
    return {f"checked_{node}": "ok"}


def summarize(ctx: RunContext) -> dict[str, str]:
    """Report how many nodes the copies before it checked."""
    checked = sorted(key for key in ctx.string_map if key.startswith("checked_"))
    ctx.log.info("checked %d nodes: %s", len(checked), ", ".join(checked))
    return {"checked_nodes": str(len(checked))}
