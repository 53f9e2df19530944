"""The golden test: a submitted "Stop OCP agent" task renders as OCP's published sample.

``tests/data/ocp/stop-ocp-agent.json`` is OCP's response to ``POST /compute/hosts/2/agent/stop``,
i.e. the task at the moment of submission. With ``workers=0`` nothing runs, so our task is frozen
at that same moment and its JSON must match the sample key for key and type for type, and value
for value except what is ours by nature: ids, timestamps, executor, creator, className and the
host id.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagtask import Engine, views

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "ocp" / "stop-ocp-agent.json"
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$")

# Values that are ours by nature; everything else must equal the sample.
TASK_OWN = {"id", "startTime", "executor", "creator", "hostId", "context", "subtasks"}
SUBTASK_OWN = {"id", "className", "upstreams", "downstreams"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine("sqlite:///" + str(tmp_path / "g.db"), workers=0)
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture
def reference() -> dict[str, Any]:
    return dict(json.loads(SAMPLE.read_text(encoding="utf-8")))


def assert_same_shape(ours: Any, ref: Any, where: str = "data") -> None:
    """Same JSON type at every level, and the same keys in every object."""
    assert type(ours) is type(ref), f"{where}: {type(ours).__name__} != {type(ref).__name__}"
    if isinstance(ref, dict):
        assert set(ours) == set(ref), f"{where}: keys differ: {sorted(set(ours) ^ set(ref))}"
        for key in ref:
            assert_same_shape(ours[key], ref[key], f"{where}.{key}")
    elif isinstance(ref, list) and ref:
        # Lists are homogeneous in OCP's JSON (subtasks, id lists): compare against its first.
        for idx, item in enumerate(ours):
            assert_same_shape(item, ref[0], f"{where}[{idx}]")


def test_submitted_stop_agent_task_matches_the_ocp_sample(
    engine: Engine, tmp_path: Path, reference: dict[str, Any]
) -> None:
    host = engine.hosts.add(name="demo-1", inner_ip="127.0.0.1", agent_home=str(tmp_path / "agent"))
    task = engine.submit("Stop OCP agent", args={"host_id": str(host.id)})
    # A JSON round trip proves the output is plain JSON and gives JSON's own types.
    ours: dict[str, Any] = json.loads(json.dumps(views.task_json(task)))
    ref: dict[str, Any] = reference["data"]

    # Keys and types, at every level (task, context, each subtask, ids in the link lists).
    assert_same_shape(ours, ref)

    # Task values.
    for key in set(ref) - TASK_OWN:
        assert ours[key] == ref[key], key
    assert ours["hostId"] == host.id
    assert ours["context"] == {
        **ref["context"],
        "stringMap": {**ref["context"]["stringMap"], "host_id": str(host.id)},
    }
    assert ISO_MS.match(ours["startTime"]), ours["startTime"]
    assert ours["creator"] and ours["executor"]

    # Subtasks, matched by name (the sample's names are unique).
    ref_subs = {sub["name"]: sub for sub in ref["subtasks"]}
    our_subs = {sub["name"]: sub for sub in ours["subtasks"]}
    assert len(our_subs) == len(ours["subtasks"]) == len(ref["subtasks"])
    assert set(our_subs) == set(ref_subs)
    for name, ref_sub in ref_subs.items():
        sub = our_subs[name]
        for key in set(ref_sub) - SUBTASK_OWN:
            assert sub[key] == ref_sub[key], f"{name}.{key}"
        ocp_class = ref_sub["className"].rsplit(".", 1)[1]
        assert sub["className"].endswith("." + ocp_class), sub["className"]
        # className is the handler's dotted Python path (SPEC §1): it must import.
        module, attr = sub["className"].rsplit(".", 1)
        assert hasattr(importlib.import_module(module), attr), sub["className"]

    # The moment of submission: the root is READY, the rest PENDING; seriesId as in the sample.
    assert {n: s["status"] for n, s in our_subs.items()} == {
        "Prepare stop OCP agent": "READY",
        "Stop all OCP agent processes": "PENDING",
        "Finish OCP agent operation": "PENDING",
    }
    assert {n: s["seriesId"] for n, s in our_subs.items()} == {
        n: s["seriesId"] for n, s in ref_subs.items()
    }

    # Links: distinct ids, pointing inside the task, consistent both ways, same chain by name.
    our_names = {sub["id"]: sub["name"] for sub in ours["subtasks"]}
    ref_names = {sub["id"]: sub["name"] for sub in ref["subtasks"]}
    assert len(our_names) == len(ours["subtasks"])
    for sub in ours["subtasks"]:
        # The sample root's upstreams list is empty, so assert_same_shape cannot type those ids.
        assert all(type(i) is int for i in sub["upstreams"] + sub["downstreams"]), sub["name"]
        assert set(sub["upstreams"]) | set(sub["downstreams"]) <= set(our_names), sub["name"]
        for up in sub["upstreams"]:
            assert sub["id"] in our_subs[our_names[up]]["downstreams"], sub["name"]
        for down in sub["downstreams"]:
            assert sub["id"] in our_subs[our_names[down]]["upstreams"], sub["name"]
    for name, ref_sub in ref_subs.items():
        for key in ("upstreams", "downstreams"):
            got = sorted(our_names[i] for i in our_subs[name][key])
            assert got == sorted(ref_names[i] for i in ref_sub[key]), f"{name}.{key}"


def test_submitted_task_in_its_envelope_has_the_sample_shape(
    engine: Engine, tmp_path: Path, reference: dict[str, Any]
) -> None:
    host = engine.hosts.add(name="demo-1", inner_ip="127.0.0.1", agent_home=str(tmp_path / "agent"))
    task = engine.submit("Stop OCP agent", args={"host_id": str(host.id)})
    body = views.envelope(views.task_json(task), duration_ms=37, trace_id="t1", server="me")
    ours = json.loads(json.dumps(body))
    assert_same_shape(ours, reference)
    assert (ours["status"], ours["successful"]) == (200, True)
    assert ISO_MS.match(ours["timestamp"]), ours["timestamp"]
