"""Hypothesis strategies: random DAG templates."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from dagtask import TaskTemplate, TemplateBuilder


@dataclass(frozen=True)
class Dag:
    """A random DAG: node names in a topological order and (upstream, downstream) edges."""

    names: tuple[str, ...]
    edges: frozenset[tuple[str, str]]

    def template(
        self, handler: str = "tests.handlers.record", concurrency: int = 10
    ) -> TaskTemplate:
        """The DAG as a template whose every subtask runs ``handler``."""
        t = TemplateBuilder(f"dag-{len(self.names)}", concurrency=concurrency)
        for name in self.names:
            t.add(name, handler, after=sorted(u for u, d in self.edges if d == name))
        return t.build()

    def upstreams(self, name: str) -> set[str]:
        """Direct upstreams of ``name``."""
        return {u for u, d in self.edges if d == name}

    def descendants(self, sources: set[str]) -> set[str]:
        """Every node reachable from ``sources`` (sources excluded)."""
        found: set[str] = set()
        frontier = set(sources)
        while frontier:
            nxt = {d for u, d in self.edges if u in frontier} - found
            found |= nxt
            frontier = nxt
        return found


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 50) -> Dag:
    """DAGs of 1..max_nodes nodes; an edge i -> j only for i < j, so there is never a cycle."""
    n = draw(st.integers(min_value=1, max_value=max_nodes))
    names = tuple(f"n{i}" for i in range(n))
    pairs = [(i, j) for j in range(n) for i in range(max(0, j - 6), j)]
    chosen = draw(st.sets(st.sampled_from(pairs), max_size=3 * n)) if pairs else set()
    return Dag(names, frozenset((names[i], names[j]) for i, j in chosen))


@st.composite
def cyclic_graphs(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    """A graph that has at least one cycle: a random DAG plus one back edge."""
    dag = draw(dags(max_nodes=12).filter(lambda d: len(d.names) >= 2))
    i = draw(st.integers(0, len(dag.names) - 2))
    j = draw(st.integers(i + 1, len(dag.names) - 1))
    edges = set(dag.edges) | {(dag.names[i], dag.names[j]), (dag.names[j], dag.names[i])}
    return list(dag.names), sorted(edges)


@dataclass(frozen=True)
class EngineTask:
    """A template for the store state machine and the listMap to submit it with."""

    template: TaskTemplate
    lists: dict[str, list[str]]


def _rarely(draw: st.DrawFn) -> bool:
    """True about one time in eight (a flag that blocks rollbacks)."""
    return draw(st.integers(0, 7)) == 7


@st.composite
def engine_tasks(draw: st.DrawFn, max_nodes: int = 12) -> EngineTask:
    """A random DAG of 1..max_nodes specs with retries, prohibit_rollback flags, a small
    concurrency and sometimes one spec fanned out (PARALLEL or SERIAL) over ``listMap.hosts``."""
    dag = draw(dags(max_nodes=max_nodes))
    split = draw(st.none() | st.sampled_from(dag.names))
    method = draw(st.sampled_from(["PARALLEL", "SERIAL"]))
    t = TemplateBuilder(
        f"machine-{len(dag.names)}",
        prohibit_rollback=_rarely(draw),
        concurrency=draw(st.integers(1, 4)),
    )
    for name in dag.names:
        t.add(
            name,
            "tests.handlers.record",
            after=sorted(dag.upstreams(name)),
            retry_count=draw(st.integers(0, 2)),
            prohibit_rollback=_rarely(draw),
            split_key="hosts" if name == split else None,
            split_method=method,
        )
    hosts = [f"h{i}" for i in range(draw(st.integers(1, 3)))]
    return EngineTask(t.build(), {"hosts": hosts} if split else {})
