"""OCP JSON rendering (dagtask.views) checked against OCP's published samples."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dagtask import views
from dagtask.context import TaskContext
from dagtask.errors import OperationNotAllowedError, TaskNotFoundError
from dagtask.models import SubtaskInfo, TaskInfo, TaskPage
from dagtask.states import Operation, SubtaskStatus, TaskStatus

OCP = Path(__file__).resolve().parents[1] / "data" / "ocp"

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$")

T0 = datetime(2021, 9, 3, 6, 27, 59, 687000)  # naive UTC, as the store keeps times


def sample(name: str) -> Any:
    return json.loads((OCP / name).read_text(encoding="utf-8"))


def golden() -> dict[str, Any]:
    data: dict[str, Any] = sample("stop-ocp-agent.json")["data"]
    return data


def make_subtask(
    sid: int,
    name: str,
    series_id: int,
    *,
    status: SubtaskStatus = SubtaskStatus.PENDING,
    upstreams: list[int] | None = None,
    downstreams: list[int] | None = None,
    ran: bool = False,
) -> SubtaskInfo:
    return SubtaskInfo(
        id=sid,
        task_id=1,
        name=name,
        description=name,
        class_name=f"dagtask.builtin.ocp_agent.{name.replace(' ', '')}Task",
        operation=Operation.EXECUTE,
        status=status,
        series_id=series_id,
        run_time=1,
        timeout=60,
        retry_count=0,
        parallel=False,
        parallel_idx=-1,
        prohibit_rollback=False,
        upstreams=upstreams or [],
        downstreams=downstreams or [],
        executor="127.0.0.1:1234" if ran else None,
        create_time=T0,
        start_time=T0 + timedelta(seconds=1) if ran else None,
        finish_time=T0 + timedelta(seconds=2) if ran else None,
    )


def fresh_task(**extra: Any) -> TaskInfo:
    """A just-submitted three-step chain, like the golden sample."""
    subs = [
        make_subtask(12, "Prepare", 2, status=SubtaskStatus.READY, downstreams=[11]),
        make_subtask(10, "Finish", 0, upstreams=[11]),
        make_subtask(11, "Stop", 1, upstreams=[12], downstreams=[10]),
    ]
    fields: dict[str, Any] = {
        "id": 1,
        "name": "Stop OCP agent",
        "template_id": None,
        "status": TaskStatus.RUNNING,
        "operation": Operation.EXECUTE,
        "creator": "admin",
        "executor": "127.0.0.1:1234",
        "context": TaskContext(string_map={"prohibit_rollback": "false", "host_id": "2"}),
        "prohibit_rollback": False,
        "host_id": 2,
        "concurrency": 10,
        "create_time": T0,
        "start_time": T0,
        "subtasks": subs,
    }
    fields.update(extra)
    return TaskInfo(**fields)


def finished_task(**extra: Any) -> TaskInfo:
    subs = [
        make_subtask(12, "Prepare", 2, status=SubtaskStatus.SUCCESSFUL, downstreams=[11], ran=True),
        make_subtask(10, "Finish", 0, status=SubtaskStatus.SUCCESSFUL, upstreams=[11], ran=True),
        make_subtask(
            11,
            "Stop",
            1,
            status=SubtaskStatus.SUCCESSFUL,
            upstreams=[12],
            downstreams=[10],
            ran=True,
        ),
    ]
    fields: dict[str, Any] = {
        "status": TaskStatus.SUCCESSFUL,
        "finish_time": T0 + timedelta(seconds=3),
        "subtasks": subs,
    }
    fields.update(extra)
    return fresh_task(**fields)


def all_keys(value: Any, skip: frozenset[str] = frozenset({"stringMap", "listMap"})) -> set[str]:
    """Every object key in a JSON document, not descending into the user-keyed maps."""
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            keys.add(key)
            if key not in skip:
                keys |= all_keys(item, skip)
    elif isinstance(value, list):
        for item in value:
            keys |= all_keys(item, skip)
    return keys


@pytest.fixture
def utc_plus_8(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in OCP's sample zone (UTC+8; POSIX TZ strings invert the sign, needing no tzdata)."""
    monkeypatch.setenv("TZ", "CST-8")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --- timestamps ---------------------------------------------------------------------------------


def test_iso_ms_matches_the_sample_format() -> None:
    text = views.iso_ms(T0)
    assert ISO_MS.match(text), text
    assert ISO_MS.match(golden()["startTime"])
    # A naive time is UTC: the rendered text is the same instant whatever the local zone.
    assert datetime.fromisoformat(text) == T0.replace(tzinfo=UTC)


def test_iso_ms_reproduces_the_golden_start_time_in_utc_plus_8(utc_plus_8: None) -> None:
    assert views.iso_ms(T0) == golden()["startTime"] == "2021-09-03T14:27:59.687+08:00"
    assert views.iso_ms(T0.replace(microsecond=0)) == "2021-09-03T14:27:59.000+08:00"


def test_iso_ms_converts_aware_times_to_the_local_zone(utc_plus_8: None) -> None:
    aware = datetime(2021, 9, 3, 8, 27, 59, 687999, tzinfo=UTC)
    assert views.iso_ms(aware) == "2021-09-03T16:27:59.687+08:00"


def test_every_timestamp_of_a_finished_task_has_milliseconds_and_offset() -> None:
    data = views.task_json(finished_task())
    stamps = [data["startTime"], data["finishTime"]]
    for sub in data["subtasks"]:
        stamps += [sub["startTime"], sub["finishTime"]]
    assert len(stamps) == 8
    for stamp in stamps:
        assert ISO_MS.match(stamp), stamp


# --- task and subtask objects -------------------------------------------------------------------


def test_fresh_task_has_exactly_the_golden_key_sets() -> None:
    data = views.task_json(fresh_task())
    ref = golden()
    assert set(data) == set(ref)
    assert set(data["context"]) == set(ref["context"])
    for sub in data["subtasks"]:
        assert set(sub) == set(ref["subtasks"][0])


def test_fresh_task_values_have_the_sample_json_types() -> None:
    data = json.loads(json.dumps(views.task_json(fresh_task())))
    ref = golden()
    for key, value in ref.items():
        assert type(data[key]) is type(value), key
    for key, value in ref["subtasks"][0].items():
        for sub in data["subtasks"]:
            assert type(sub[key]) is type(value), key
    for key, value in ref["context"].items():
        assert type(data["context"][key]) is type(value), key


def test_fresh_task_values() -> None:
    data = views.task_json(fresh_task())
    assert data["hostId"] == 2
    assert data["taskDefinitionId"] == -1
    assert data["type"] == "MANUAL"
    assert data["context"] == {
        "listMap": {},
        "parallel": False,
        "parallelIdx": -1,
        "stringMap": {"prohibit_rollback": "false", "host_id": "2"},
    }
    prepare = data["subtasks"][0]
    assert prepare["upstreams"] == [] and prepare["downstreams"] == [11]
    assert prepare["nodeType"] == "JAVA_TASK"
    assert prepare["prohibitRollback"] is False
    assert prepare["className"] == "dagtask.builtin.ocp_agent.PrepareTask"


def test_enums_are_plain_strings() -> None:
    data = views.task_json(fresh_task())
    values = [data["status"], data["operation"], data["type"]]
    values += [sub[key] for sub in data["subtasks"] for key in ("status", "operation")]
    assert all(type(value) is str for value in values)
    assert [sub["status"] for sub in data["subtasks"]] == ["READY", "PENDING", "PENDING"]


def test_keys_are_camel_case() -> None:
    keys = all_keys(views.task_json(finished_task(cluster_id=3, tenant_id=4)))
    assert {"className", "parallelIdx", "seriesId", "taskDefinitionId", "tenantId"} <= keys
    for key in keys:
        assert re.fullmatch(r"[a-z][a-zA-Z]*", key), key


def test_subtasks_are_ordered_by_series_id_descending() -> None:
    data = views.task_json(fresh_task())
    assert [sub["seriesId"] for sub in data["subtasks"]] == [2, 1, 0]
    assert data["subtasks"][0]["status"] == "READY"  # the root comes first, as in the sample


def test_finished_task_adds_finish_time_and_subtask_run_fields() -> None:
    data = views.task_json(finished_task())
    ref = golden()
    assert set(data) == set(ref) | {"finishTime"}
    # task-detail.json is OCP's finished task: its subtasks add executor/startTime/finishTime
    # to the golden set (we leave out createTime and keep className, as the golden sample does).
    detail_sub = set(sample("task-detail.json")["data"]["subtasks"][0])
    for sub in data["subtasks"]:
        assert set(sub) == set(ref["subtasks"][0]) | {"executor", "startTime", "finishTime"}
        assert set(sub) == (detail_sub - {"createTime"}) | {"className"}
        assert sub["executor"] == "127.0.0.1:1234"


def test_subjects_appear_only_when_set() -> None:
    none = views.task_json(fresh_task(host_id=None))
    assert not {"hostId", "clusterId", "tenantId"} & set(none)
    both = views.task_json(fresh_task(host_id=None, cluster_id=7, tenant_id=8))
    assert (both["clusterId"], both["tenantId"]) == (7, 8)
    assert "hostId" not in both


def test_task_start_time_falls_back_to_create_time() -> None:
    data = views.task_json(fresh_task(start_time=None))
    assert data["startTime"] == views.iso_ms(T0)


def test_subtask_json_matches_the_retry_subtask_sample_keys() -> None:
    sub = make_subtask(5, "Uninstall", 2, status=SubtaskStatus.SUCCESSFUL, ran=True)
    data = views.subtask_json(sub)
    ref = sample("retry-subtask.json")["data"]
    assert set(data) == (set(ref) - {"createTime"}) | {"className"}
    assert data["runTime"] == 1 and data["timeout"] == 60


# --- lists, logs, envelopes ---------------------------------------------------------------------


def test_task_list_page_matches_the_sample() -> None:
    tasks = [finished_task(host_id=None), fresh_task()]
    page = TaskPage(tasks=tasks, number=1, size=10, total_elements=12)
    data = views.task_list_json(page)
    ref = sample("query-task-list.json")["data"]
    assert set(data) == set(ref) == {"contents", "page"}
    assert set(data["page"]) == set(ref["page"])
    assert data["page"] == {"number": 1, "size": 10, "totalElements": 12, "totalPages": 2}

    finished, fresh = data["contents"]
    # OCP's list item minus its cluster/tenant objects, which dagtask does not have.
    assert set(finished) == set(ref["contents"][0]) - {"cluster", "tenant"}
    assert set(fresh) == set(ref["contents"][0]) - {"cluster", "tenant", "finishTime"} | {"hostId"}
    assert isinstance(finished["creator"], str)  # OCP shows an object here; ours is a string
    for sub in finished["subtasks"] + fresh["subtasks"]:
        assert set(sub) == set(ref["contents"][0]["subtasks"][0])
    assert [sub["status"] for sub in fresh["subtasks"]] == ["READY", "PENDING", "PENDING"]


def test_log_json_matches_the_sample() -> None:
    ref = sample("subtask-log.json")["data"]
    assert views.log_json(ref["log"]) == ref


def test_envelope_has_the_golden_shape() -> None:
    ref = sample("stop-ocp-agent.json")
    out = json.loads(
        json.dumps(
            views.envelope(
                views.task_json(fresh_task()), duration_ms=37, trace_id="ecdbec1d", server="me"
            )
        )
    )
    assert set(out) == set(ref)
    for key, value in ref.items():
        assert type(out[key]) is type(value), key
    assert (out["status"], out["successful"], out["duration"]) == (200, True, 37)
    assert ISO_MS.match(out["timestamp"])


def test_envelope_without_data_has_the_skip_sample_shape() -> None:
    out = views.envelope(None, duration_ms=1, trace_id="t", server="s", timestamp=T0)
    assert set(out) == set(sample("skip-subtask.json")) == set(sample("cancel-subtask.json"))
    assert out["timestamp"] == views.iso_ms(T0)


def test_error_envelope_has_the_429_shape_plus_target_and_sub_errors() -> None:
    ref = sample("api-error-envelope-429.json")
    err = TaskNotFoundError("task 7 does not exist", target="7")
    out = json.loads(json.dumps(views.error_envelope(err, trace_id="", server="me", duration_ms=0)))
    assert set(out) == set(ref)
    for key, value in ref.items():
        assert type(out[key]) is type(value), key
    assert set(out["error"]) == set(ref["error"]) | {"target", "subErrors"}
    assert out["error"] == {
        "code": 20000,
        "message": "task 7 does not exist",
        "target": "7",
        "subErrors": [],
    }
    assert (out["status"], out["successful"]) == (404, False)


def test_error_envelope_status_defaults_and_overrides() -> None:
    conflict = views.error_envelope(
        OperationNotAllowedError("no"), trace_id="t", server="s", duration_ms=1
    )
    assert conflict["status"] == 409 and conflict["error"]["target"] is None
    throttled = views.error_envelope(
        TaskNotFoundError("x"), status=429, trace_id="t", server="s", duration_ms=1
    )
    assert throttled["status"] == 429
    boom = views.error_envelope(RuntimeError("disk full"), trace_id="t", server="s", duration_ms=1)
    assert boom["status"] == 500
    assert boom["error"]["code"] == 500
    assert boom["error"]["message"] == "RuntimeError: disk full"


# --- the sample corpus --------------------------------------------------------------------------

JSON_SAMPLES = sorted(OCP.glob("*.json"))
MALFORMED_SAMPLES = sorted(OCP.glob("*.json.txt"))


def test_the_whole_sample_corpus_is_here() -> None:
    # 60 JSON files + 1 malformed one, as listed in INDEX.md; a missing copy would silently
    # shrink the parametrized test below.
    assert len(JSON_SAMPLES) == 60
    assert [p.name for p in MALFORMED_SAMPLES] == ["retry-subtask.json.txt"]
    assert (OCP / "INDEX.md").is_file()


@pytest.mark.parametrize("path", JSON_SAMPLES, ids=lambda p: p.name)
def test_json_sample_parses(path: Path) -> None:
    json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", MALFORMED_SAMPLES, ids=lambda p: p.name)
def test_malformed_sample_does_not_parse(path: Path) -> None:
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        json.loads(path.read_text(encoding="utf-8"))
