"""Graph rules on networkx: the only module that imports it.

Nodes are opaque hashable keys (template subtask names, or expanded subtask indexes); edges point
from an upstream to its downstream.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import networkx as nx

from dagtask.errors import CycleError

N = TypeVar("N", bound=Hashable)


def build(nodes: Sequence[N], edges: Iterable[tuple[N, N]]) -> nx.DiGraph:
    """A directed graph of ``nodes`` (in the given order) and ``upstream -> downstream`` edges."""
    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    return graph


def _by_position(
    nodes: Sequence[N], edges: Iterable[tuple[N, N]]
) -> tuple[list[list[int]], list[int]]:
    """Each node's downstream positions and its count of upstreams (Kahn's algorithm's input)."""
    position = {node: i for i, node in enumerate(nodes)}
    downstream: list[list[int]] = [[] for _ in nodes]
    indegree = [0] * len(nodes)
    for up, down in edges:
        downstream[position[up]].append(position[down])
        indegree[position[down]] += 1
    return downstream, indegree


def check_acyclic(nodes: Sequence[N], edges: Iterable[tuple[N, N]]) -> None:
    """Raise :class:`CycleError` (20001) naming the nodes of one cycle, if there is one.

    An acyclic graph (every template that is accepted) is checked by Kahn's algorithm over node
    positions, without building a networkx graph: for a 100,000-subtask template that graph was
    a second and ~100 MB of garbage. Only a graph that has a cycle is built, to name the cycle.
    """
    pairs = edges if isinstance(edges, list) else list(edges)
    downstream, indegree = _by_position(nodes, pairs)
    ready = [i for i, degree in enumerate(indegree) if degree == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in downstream[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if seen == len(nodes):
        return
    try:
        cycle = nx.find_cycle(build(nodes, pairs))
    except nx.NetworkXNoCycle:  # pragma: no cover - Kahn's algorithm saw one
        return
    raise CycleError([str(u) for u, _ in cycle])


def topological_order(nodes: Sequence[N], edges: Iterable[tuple[N, N]]) -> list[N]:
    """A topological order that is deterministic: ties are broken by position in ``nodes``.

    Kahn's algorithm over positions with a heap: this runs for every submitted task, so it avoids
    building a networkx graph (ten times slower on a 10,000-subtask task).
    """
    downstream, indegree = _by_position(nodes, edges)
    ready = [i for i, degree in enumerate(indegree) if degree == 0]
    heapq.heapify(ready)
    order: list[N] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in downstream[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):  # templates are checked acyclic before they get here
        raise ValueError("the graph has a cycle")
    return order


def descendants(nodes: Sequence[N], edges: Iterable[tuple[N, N]], sources: Iterable[N]) -> set[N]:
    """Every node reachable from any of ``sources`` (the sources themselves excluded)."""
    graph = build(nodes, edges)
    found: set[N] = set()
    for source in sources:
        found |= nx.descendants(graph, source)
    return found


def reverse_generations(nodes: Sequence[N], edges: Iterable[tuple[N, N]]) -> list[list[N]]:
    """Waves of a reverse topological order: sinks first, then what only they depended on, ...

    Each wave can run once every earlier wave is done (the order a rollback takes).
    """
    position = {node: i for i, node in enumerate(nodes)}
    graph = build(nodes, edges).reverse(copy=True)
    return [sorted(wave, key=position.__getitem__) for wave in nx.topological_generations(graph)]


def longest_path_layers(nodes: Sequence[N], edges: Iterable[tuple[N, N]]) -> dict[N, int]:
    """Each node's layer for a left-to-right drawing: the length of the longest path to it from
    a root (roots are layer 0), so every edge goes from a lower layer to a higher one.

    Linear in nodes and edges (after the topological order); raises ``ValueError`` on a cycle.
    """
    pairs = list(edges)
    upstream: dict[N, list[N]] = {node: [] for node in nodes}
    for up, down in pairs:
        upstream[down].append(up)
    layer: dict[N, int] = {}
    for node in topological_order(nodes, pairs):
        layer[node] = max((layer[up] + 1 for up in upstream[node]), default=0)
    return layer
