"""The built-in OCP agent templates, submitted and frozen at submission, against OCP's samples.

Like the golden Stop OCP agent test: with ``workers=0`` nothing runs, so each task shows the moment
OCP's sample response shows. Keys and JSON types must match at every level, and so must every value
that is not ours by nature (ids, timestamps, executor, creator, className, the host ids).
``seriesId`` is the exception by design: OCP's samples follow no single order, dagtask numbers
subtasks in reverse topological order (docs/design.md); only the Stop OCP agent sample agrees.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagtask import Engine, views
from dagtask.errors import ArgumentError, HostNotFoundError
from dagtask.models import HostInfo
from tests.integration.test_golden_stop_agent import assert_same_shape

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ocp"
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$")
TASK_OWN = {"id", "startTime", "executor", "creator", "hostId", "context", "subtasks"}
# Compared separately: ids and links (by name), className (by its last part), seriesId (by rule).
SUBTASK_OWN = {"id", "className", "upstreams", "downstreams", "seriesId"}

# (template as the user names it, sample file, whether it acts on one host or a list)
CASES = [
    ("Stop OCP agent", "stop-ocp-agent.json", "single"),
    ("Restart OCP agent", "restart-ocp-agent.json", "single"),
    ("Batch stop OCP agent", "stop-ocp-agents-batch.json", "batch"),
    ("Batch restart OCP agent", "restart-ocp-agents-batch.json", "batch"),
]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine("sqlite:///" + str(tmp_path / "t.db"), workers=0)
    try:
        yield eng
    finally:
        eng.close()


def add_hosts(engine: Engine, tmp_path: Path, count: int) -> list[HostInfo]:
    return [
        engine.hosts.add(name=f"demo-{i}", inner_ip="127.0.0.1", agent_home=str(tmp_path / f"a{i}"))
        for i in range(count)
    ]


def submit(engine: Engine, template: str, kind: str, hosts: list[HostInfo]) -> dict[str, Any]:
    """Submit ``template`` for ``hosts``; the task as plain JSON (a round trip gives JSON types)."""
    if kind == "single":
        task = engine.submit(template, args={"host_id": str(hosts[0].id)})
    else:
        task = engine.submit(template, lists={"host_ids": [str(h.id) for h in hosts]})
    return dict(json.loads(json.dumps(views.task_json(task))))


def names_by_id(task: dict[str, Any]) -> dict[int, str]:
    return {sub["id"]: sub["name"] for sub in task["subtasks"]}


def signature(sub: dict[str, Any], names: dict[int, str]) -> tuple[Any, ...]:
    """Everything about a subtask that must equal the sample's, links by name."""
    return (
        *sorted((k, json.dumps(v)) for k, v in sub.items() if k not in SUBTASK_OWN),
        ("upstreams", tuple(sorted(names[i] for i in sub["upstreams"]))),
        ("downstreams", tuple(sorted(names[i] for i in sub["downstreams"]))),
    )


def chain(task: dict[str, Any]) -> list[str]:
    """The subtask names from the root along the links (the samples are chains: one host)."""
    by_id = {sub["id"]: sub for sub in task["subtasks"]}
    (node,) = [sub for sub in task["subtasks"] if not sub["upstreams"]]
    names = [node["name"]]
    while node["downstreams"]:
        (next_id,) = node["downstreams"]
        node = by_id[next_id]
        names.append(node["name"])
    assert len(names) == len(by_id), "the chain visits every subtask once"
    return names


def assert_links_consistent(task: dict[str, Any]) -> None:
    """Distinct ids, links inside the task with integer ids, each link recorded both ways."""
    by_id = {sub["id"]: sub for sub in task["subtasks"]}
    assert len(by_id) == len(task["subtasks"])
    for sub in task["subtasks"]:
        links = sub["upstreams"] + sub["downstreams"]
        assert all(type(i) is int and i in by_id for i in links), sub
        for up in sub["upstreams"]:
            assert sub["id"] in by_id[up]["downstreams"], sub["name"]
        for down in sub["downstreams"]:
            assert sub["id"] in by_id[down]["upstreams"], sub["name"]


def assert_reverse_topological(task: dict[str, Any]) -> None:
    """dagtask's seriesId rule: a permutation of 0..n-1 where every subtask comes after its
    downstreams (sinks first)."""
    series = {sub["id"]: sub["seriesId"] for sub in task["subtasks"]}
    assert sorted(series.values()) == list(range(len(series)))
    for sub in task["subtasks"]:
        for down in sub["downstreams"]:
            assert series[down] < series[sub["id"]], sub["name"]


@pytest.mark.parametrize(("template", "sample", "kind"), CASES)
def test_submitted_task_matches_the_ocp_sample(
    engine: Engine, tmp_path: Path, template: str, sample: str, kind: str
) -> None:
    (host,) = add_hosts(engine, tmp_path, 1)
    ours = submit(engine, template, kind, [host])
    ref: dict[str, Any] = json.loads((SAMPLES / sample).read_text(encoding="utf-8"))["data"]

    assert_same_shape(ours, ref)
    for key in set(ref) - TASK_OWN:
        assert ours[key] == ref[key], key
    assert ISO_MS.match(ours["startTime"]), ours["startTime"]
    assert ours["creator"] and ours["executor"]
    context = ref["context"]
    if kind == "single":
        assert ours["hostId"] == host.id
        expected = {**context, "stringMap": {**context["stringMap"], "host_id": str(host.id)}}
    else:
        assert "hostId" not in ours, "a batch task has no single host (as in the sample)"
        expected = {**context, "listMap": {"host_ids": [str(host.id)]}}
    assert ours["context"] == expected

    # Same subtasks, by everything but ids (names repeat: "Wait node"), links compared by name.
    our_names, ref_names = names_by_id(ours), names_by_id(ref)
    assert Counter(signature(s, our_names) for s in ours["subtasks"]) == Counter(
        signature(s, ref_names) for s in ref["subtasks"]
    )
    assert chain(ours) == chain(ref)
    assert [s["status"] for s in ours["subtasks"] if not s["upstreams"]] == ["READY"]
    assert_links_consistent(ours)

    # className: the handler's dotted path, named like OCP's class, importable.
    ocp_classes = {s["name"]: s["className"].rsplit(".", 1)[1] for s in ref["subtasks"]}
    for sub in ours["subtasks"]:
        module, _, cls = sub["className"].rpartition(".")
        assert cls == ocp_classes[sub["name"]], sub["className"]
        assert hasattr(importlib.import_module(module), cls), sub["className"]

    assert_reverse_topological(ours)
    if sample == "stop-ocp-agent.json":
        # The one sample whose numbering follows the same rule.
        assert {s["name"]: s["seriesId"] for s in ours["subtasks"]} == {
            s["name"]: s["seriesId"] for s in ref["subtasks"]
        }


@pytest.mark.parametrize(
    ("template", "stages"),
    [("Batch stop OCP agent", 3), ("Batch restart OCP agent", 5)],
)
def test_batch_fans_every_stage_out_with_a_wait_node_between(
    engine: Engine, tmp_path: Path, template: str, stages: int
) -> None:
    hosts = add_hosts(engine, tmp_path, 3)
    task = submit(engine, template, "batch", hosts)
    assert task["context"]["listMap"] == {"host_ids": [str(h.id) for h in hosts]}
    subs = task["subtasks"]
    waits = [s for s in subs if s["name"] == "Wait node"]
    copies = [s for s in subs if s["name"] != "Wait node"]
    assert len(waits) == stages - 1 and len(copies) == 3 * stages
    assert all(w["parallelIdx"] == -1 and w["timeout"] == 30 for w in waits)
    assert all(len(w["upstreams"]) == 3 and len(w["downstreams"]) == 3 for w in waits)
    per_stage = Counter(s["name"] for s in copies)
    assert set(per_stage.values()) == {3}
    for name in per_stage:
        assert sorted(s["parallelIdx"] for s in copies if s["name"] == name) == [0, 1, 2]
    roots = [s for s in subs if not s["upstreams"]]
    assert [s["status"] for s in roots] == ["READY"] * 3, "every host's Prepare is ready"
    assert all(s["status"] == "PENDING" for s in subs if s["upstreams"])
    assert_links_consistent(task)
    assert_reverse_topological(task)


def test_templates_are_registered_under_their_slugs(engine: Engine) -> None:
    for slug, name in [
        ("stop-ocp-agent", "Stop OCP agent"),
        ("restart-ocp-agent", "Restart OCP agent"),
        ("batch-stop-ocp-agent", "Batch stop OCP agent"),
        ("batch-restart-ocp-agent", "Batch restart OCP agent"),
    ]:
        assert engine.template(slug).name == name
    assert engine.template("restart-ocp-agent").host_arg == "host_id"
    assert engine.template("batch-restart-ocp-agent").host_arg is None


@pytest.mark.parametrize("template", ["Batch stop OCP agent", "Batch restart OCP agent"])
def test_a_batch_naming_unknown_or_repeated_hosts_is_refused_before_it_exists(
    engine: Engine, tmp_path: Path, template: str
) -> None:
    (host,) = add_hosts(engine, tmp_path, 1)
    with pytest.raises(HostNotFoundError, match="hosts 999 do not exist"):
        engine.submit(template, lists={"host_ids": [str(host.id), "999"]})
    with pytest.raises(ArgumentError, match="more than once"):
        engine.submit(template, lists={"host_ids": [str(host.id), str(host.id)]})
    with pytest.raises(ArgumentError):
        engine.submit(template, lists={"host_ids": []})
    assert engine.list().total_elements == 0, "no task was created"
