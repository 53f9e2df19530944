"""OCP import fidelity: what OCP sent is kept and shown back in OCP's shape, round trips are fixed
points, the original survives a re-import, and OCP's cancel path imports and replays."""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagtask import ArgumentError, Engine, TemplateBuilder, history, views
from dagtask.cli import main
from dagtask.history import exchange, ocp_import, typed
from dagtask.secrets import MASK, is_secret_key
from dagtask.store import history as sql
from tests.history import support
from tests.history.test_ocp_import import SAMPLES, TASK_SAMPLES, task_objects

CASES = [
    pytest.param(name, i, raw, id=f"{name}[{i}]")
    for name in TASK_SAMPLES
    for i, raw in enumerate(task_objects(json.loads((SAMPLES / name).read_text())))
]
"""Every task object of OCP's samples: (file, position in the file, the object as OCP sent it)."""

SENT = ("creator", "cluster", "tenant", "prohibitRollback", "createTime")
"""The task-level fields an import used to lose (dagtask has no column for the objects)."""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path / 'ocp.db'}", workers=0) as engine:
        yield engine


@pytest.fixture
def other(tmp_path: Path) -> Iterator[Engine]:
    """A second database, for re-imports."""
    with Engine(f"sqlite:///{tmp_path / 'other.db'}", workers=0) as engine:
        yield engine


def import_case(engine: Engine, name: str, index: int) -> int:
    return history.import_files(engine, [SAMPLES / name])[index].task_id


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def shown(engine: Engine, task_id: int) -> dict[str, Any]:
    """The task's OCP JSON as the REST API and ``dagtask show --json`` print it."""
    return dict(json.loads(json.dumps(views.task_json(engine.get(task_id)))))


def without_ids(body: dict[str, Any]) -> str:
    """OCP task JSON as text, the task's and subtasks' ids replaced by their positions."""
    position = {sub["id"]: i for i, sub in enumerate(body["subtasks"])}
    body = copy.deepcopy(body)
    body["id"] = "task"
    for sub in body["subtasks"]:
        sub["id"] = position[sub["id"]]
        sub["upstreams"] = sorted(position[u] for u in sub["upstreams"])
        sub["downstreams"] = sorted(position[d] for d in sub["downstreams"])
    return json.dumps(body, ensure_ascii=False)


def export_of(engine: Engine, task_id: int) -> str:
    """The task's export as ``dagtask export`` writes it once ``history.record`` carries the OCP
    original (:func:`exchange.with_original`; see ``test_engine_export_and_import_...``)."""
    record = exchange.with_original(history.record(engine, task_id), engine.store.db)
    return "".join(line + "\n" for line in exchange.export_lines(record))


def import_export(engine: Engine, text: str, name: str = "task.jsonl") -> list[int]:
    """Import an export's tasks as ``history.import_files`` does, keeping what the export holds
    (:func:`exchange.import_origin`)."""
    records = exchange.parse_export(text, name)
    items = [sql.Import(rec, exchange.import_origin(rec, name)) for rec, _ in records]
    return sql.insert_tasks(engine.store.db, items, ocp_import.now_utc())


def origin_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if json.loads(line)["record"] == "origin"]


def masked(document: dict[str, Any]) -> dict[str, Any]:
    """An OCP task object with the values of its secret context keys masked, as exports mask
    them (docs/security.md)."""
    out = copy.deepcopy(document)
    ctx = out.get("context")
    if isinstance(ctx, dict):
        for key in ctx.get("stringMap") or {}:
            if is_secret_key(key):
                ctx["stringMap"][key] = MASK
        for key, items in (ctx.get("listMap") or {}).items():
            if is_secret_key(key):
                ctx["listMap"][key] = [MASK] * len(items)
    return out


# ---- what OCP sent, shown back ------------------------------------------------------------------


def test_the_samples_exercise_every_field() -> None:
    raws = [param.values[2] for param in CASES]
    assert len(raws) == 40
    have = {key: sum(1 for raw in raws if key in raw) for key in SENT}
    objects = sum(1 for raw in raws if isinstance(raw.get("creator"), dict))
    assert have == {
        "creator": 40,
        "cluster": 15,
        "tenant": 2,
        "prohibitRollback": 6,
        "createTime": 3,
    }
    assert objects == 18
    assert {key for raw in raws for key in raw.get("cluster", {})} == {
        "id",
        "name",
        "obClusterId",
        "type",
    }


@pytest.mark.parametrize(("name", "index", "raw"), CASES)
def test_an_import_shows_what_ocp_sent_in_ocps_shape(
    engine: Engine, name: str, index: int, raw: dict[str, Any]
) -> None:
    task_id = import_case(engine, name, index)
    body = shown(engine, task_id)
    for key in ("creator", "cluster", "tenant", "prohibitRollback"):
        if key in raw:
            assert body[key] == raw[key], key  # {id, name}, {id, name, obClusterId[, type]}, ...
        else:
            assert key not in body, key
    if "createTime" in raw:
        assert instant(body["createTime"]) == instant(raw["createTime"])
    else:
        assert "createTime" not in body
    # Nothing OCP sent at the task's level is left out ("tasks" is shown as "subtasks").
    assert set(raw) - {"tasks"} <= set(body)
    for key in ("name", "status", "operation", "type", "taskDefinitionId", "executor"):
        if key in raw:
            assert body[key] == raw[key], key
    for key in ("hostId", "clusterId", "tenantId"):
        if key in raw:
            assert body[key] == raw[key], key
    for key in ("startTime", "finishTime"):
        if key in raw:
            assert instant(body[key]) == instant(raw[key]), key
    # The original is kept as it was sent.
    task = engine.get(task_id)
    assert task.origin is not None and task.origin["document"] == raw
    creator = raw["creator"]
    assert task.creator == (creator["name"] if isinstance(creator, dict) else creator)


def test_a_native_task_keeps_the_golden_shape(engine: Engine) -> None:
    t = TemplateBuilder("Native")
    t.add("one", "dagtask.builtin.noop")
    body = shown(engine, engine.submit(t.build(), creator="carol").id)
    assert body["creator"] == "carol"
    assert not {"cluster", "tenant", "prohibitRollback", "createTime"} & set(body)


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "index", "raw"), CASES)
def test_ocp_json_import_ocp_json_is_a_fixed_point(
    engine: Engine, name: str, index: int, raw: dict[str, Any], tmp_path: Path
) -> None:
    first = shown(engine, import_case(engine, name, index))
    again = tmp_path / "again.json"
    again.write_text(json.dumps({"data": first, "successful": True}))
    second = shown(engine, history.import_files(engine, [again])[0].task_id)
    assert second["id"] != first["id"]
    assert without_ids(second) == without_ids(first)  # byte-equal apart from the ids
    again.write_text(json.dumps(second))
    third = shown(engine, history.import_files(engine, [again])[0].task_id)
    assert without_ids(third) == without_ids(first)


@pytest.mark.parametrize(("name", "index", "raw"), CASES)
def test_export_import_export_is_a_fixed_point_that_keeps_the_original(
    engine: Engine, other: Engine, name: str, index: int, raw: dict[str, Any]
) -> None:
    task_id = import_case(engine, name, index)
    first = export_of(engine, task_id)
    kinds = [json.loads(line)["record"] for line in first.splitlines()]
    assert kinds[:3] == ["header", "task", "origin"] and kinds.count("origin") == 1
    [copy_id] = import_export(other, first)
    second = export_of(other, copy_id)
    assert origin_lines(second) == origin_lines(first)  # byte for byte
    assert support.normalise(second) == support.normalise(first)  # the rest apart from ids
    [third_id] = import_export(engine, second, "copy.jsonl")
    assert support.normalise(export_of(engine, third_id)) == support.normalise(first)
    # The original survives the re-imports: as sent, its secrets masked as exports mask them.
    stored = engine.get(task_id).origin
    assert stored is not None
    for again in (other.get(copy_id), engine.get(third_id)):
        assert again.origin is not None and again.origin["format"] == "dagtask"
        original = again.origin["ocp"]
        assert original["document"] == masked(raw)
        assert {k: v for k, v in original.items() if k != "document"} == {
            k: v for k, v in stored.items() if k != "document"
        }
    # ... and so the copy shows what OCP sent.
    shown_first, shown_copy = shown(engine, task_id), shown(other, copy_id)
    for key in SENT:
        assert shown_copy.get(key) == shown_first.get(key), key


def test_the_fixed_point_on_every_database(db_url: str, tmp_path: Path) -> None:
    names = ["query-task-list.json", "stop-ob-cluster.json", "add-obproxy.json", "task-detail.json"]
    with (
        Engine(db_url, workers=0) as target,
        Engine(f"sqlite:///{tmp_path / 's.db'}", workers=0) as source,
    ):
        for name in names:
            for item in history.import_files(source, [SAMPLES / name]):
                first = export_of(source, item.task_id)
                [copy_id] = import_export(target, first)
                second = export_of(target, copy_id)
                assert origin_lines(second) == origin_lines(first)
                assert support.normalise(second) == support.normalise(first)
                body = shown(target, copy_id)
                assert body["creator"] == shown(source, item.task_id)["creator"]
                assert history.replay(target, copy_id) == history.snapshot(target, copy_id)


def test_an_export_masks_the_secrets_of_the_original(engine: Engine) -> None:
    [item] = history.import_files(engine, [SAMPLES / "add-obproxy.json"])
    text = export_of(engine, item.task_id)
    assert "obproxyd.sh" not in text  # process_keywords is secret ("key")
    [origin] = origin_lines(text)
    keywords = json.loads(origin)["document"]["context"]["listMap"]["process_keywords"]
    assert keywords == [MASK, MASK]
    # The store keeps the real values (docs/security.md).
    stored = engine.get(item.task_id).origin
    assert stored is not None
    assert stored["document"]["context"]["listMap"]["process_keywords"] == [
        "obproxy",
        "obproxyd.sh",
    ]


def test_the_java_context_text_travels_with_the_export(engine: Engine, other: Engine) -> None:
    [item] = history.import_files(engine, [SAMPLES / "stop-ob-cluster.json"])
    [copy_id] = import_export(other, export_of(engine, item.task_id))
    stored, again = engine.get(item.task_id).origin, other.get(copy_id).origin
    assert stored is not None and again is not None
    assert again["ocp"]["context_text"] == stored["context_text"]
    assert again["ocp"]["context_text"].startswith("Context(")


def test_line_breaks_that_json_leaves_alone_stay_inside_their_line(
    engine: Engine, other: Engine, tmp_path: Path
) -> None:
    raw = json.loads((SAMPLES / "task-detail.json").read_text())["data"]
    raw["creator"] = {"id": 7, "name": "ops\u2028night"}
    raw["name"] = "Reinstall\x85OCP agent\u2029"
    path = tmp_path / "breaks.json"
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    [item] = history.import_files(engine, [path])
    text = export_of(engine, item.task_id)
    assert len(text.splitlines()) == len(text.split("\n")) - 1  # escaped in every line
    [copy_id] = import_export(other, text)
    assert shown(other, copy_id)["creator"] == raw["creator"]
    assert other.get(copy_id).name == raw["name"]
    # A file written before they were escaped still reads: only "\n" ends a line.
    unescaped = text.replace("\\u2028", "\u2028").replace("\\u0085", "\x85")
    assert len(unescaped.splitlines()) > len(text.splitlines())
    [older] = import_export(other, unescaped)
    assert support.normalise(export_of(other, older)) == support.normalise(text)


def test_a_native_tasks_export_has_no_origin_record(engine: Engine) -> None:
    t = TemplateBuilder("Native")
    t.add("one", "dagtask.builtin.noop")
    task = engine.submit(t.build())
    buffer = io.StringIO()
    history.export_task(engine, task.id, buffer)
    assert origin_lines(buffer.getvalue()) == [] == origin_lines(export_of(engine, task.id))


def test_engine_export_and_import_keep_the_original(
    engine: Engine, other: Engine, tmp_path: Path
) -> None:
    [item] = history.import_files(engine, [SAMPLES / "task-detail.json"])
    path = tmp_path / "task.jsonl"
    engine.export(item.task_id, path)
    assert len(origin_lines(path.read_text())) == 1
    [again] = other.import_files([path])
    origin = other.get(again.task_id).origin
    assert (
        origin is not None
        and origin["ocp"]["document"]
        == task_objects(json.loads((SAMPLES / "task-detail.json").read_text()))[0]
    )
    assert shown(other, again.task_id)["creator"] == {"id": 100, "name": "admin"}


# ---- a property: whatever creator, cluster and tenant OCP sends --------------------------------

_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
_ids = st.integers(min_value=-(2**53), max_value=2**53)
_creators = st.one_of(
    _text.filter(bool), st.fixed_dictionaries({"id": _ids, "name": _text.filter(bool)})
)
_clusters = st.none() | st.fixed_dictionaries(
    {"id": _ids, "name": _text, "obClusterId": _ids},
    optional={"type": st.sampled_from(["PRIMARY", "STANDBY"]) | st.none()},
)
_tenants = st.none() | st.fixed_dictionaries(
    {"id": _ids, "name": _text},
    optional={"mode": st.sampled_from(["MYSQL", "ORACLE"]), "obTenantId": _ids},
)
_created = st.none() | st.builds(
    lambda when, minutes: (
        when.replace(microsecond=when.microsecond // 1000 * 1000, tzinfo=UTC)
        .astimezone(timezone(timedelta(minutes=minutes)))
        .isoformat(timespec="milliseconds")
    ),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=-12 * 60, max_value=14 * 60),
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Engine, Path]]:
    folder = tmp_path_factory.mktemp("fidelity")
    with (
        Engine(f"sqlite:///{folder / 'a.db'}", workers=0) as a,
        Engine(f"sqlite:///{folder / 'b.db'}", workers=0) as b,
    ):
        yield a, b, folder


@settings(deadline=None)
@given(
    creator=_creators,
    cluster=_clusters,
    tenant=_tenants,
    prohibit=st.none() | st.booleans(),
    created=_created,
)
def test_any_creator_cluster_and_tenant_round_trip(
    shared: tuple[Engine, Engine, Path],
    creator: Any,
    cluster: dict[str, Any] | None,
    tenant: dict[str, Any] | None,
    prohibit: bool | None,
    created: str | None,
) -> None:
    a, b, folder = shared
    raw = json.loads((SAMPLES / "stop-ocp-agent.json").read_text())["data"]
    raw["creator"] = creator
    for key, value in (
        ("cluster", cluster),
        ("tenant", tenant),
        ("prohibitRollback", prohibit),
        ("createTime", created),
    ):
        if value is not None:
            raw[key] = value
    path = folder / "generated.json"
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    [item] = history.import_files(a, [path])
    body = shown(a, item.task_id)
    for key in ("creator", "cluster", "tenant", "prohibitRollback"):
        assert body.get(key) == raw.get(key), key
    if created is not None:
        assert instant(body["createTime"]) == instant(created)
    # OCP JSON -> import -> OCP JSON, and export -> import -> export: fixed points.
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    [again] = history.import_files(a, [path])
    assert without_ids(shown(a, again.task_id)) == without_ids(body)
    first = export_of(a, item.task_id)
    [copy_id] = import_export(b, first)
    assert origin_lines(export_of(b, copy_id)) == origin_lines(first)
    origin = b.get(copy_id).origin
    assert origin is not None and origin["ocp"]["document"] == raw
    assert without_ids(shown(b, copy_id)) == without_ids(body)


# ---- the cancel path: OCP's (RUNNING / CANCEL before FAILED) and dagtask's -----------------------


def cancelled_document(still_running: bool) -> dict[str, Any]:
    """task-detail.json with its third step ("Install ocp agent") cancelled the way OCP shows
    it: RUNNING / CANCEL while the cancel runs, then FAILED / CANCEL."""
    document = json.loads((SAMPLES / "task-detail.json").read_text())
    data = document["data"]
    subs = {s["name"]: s for s in data["subtasks"]}
    install, finish = subs["Install ocp agent"], subs["Finish reinstalling OCP agent"]
    install["operation"] = "CANCEL"
    install["status"] = "RUNNING" if still_running else "FAILED"
    for key in ("startTime", "finishTime", "executor"):
        finish.pop(key)
    finish["status"] = "PENDING"
    if still_running:
        install.pop("finishTime")
        data.pop("finishTime")
        data["status"] = "RUNNING"
    else:
        data["finishTime"] = install["finishTime"]
        data["status"] = "FAILED"
    return dict(document)


@pytest.mark.parametrize("still_running", [True, False], ids=["running-cancel", "failed-cancel"])
def test_an_ocp_document_with_a_cancel_imports_along_ocps_path(
    engine: Engine, tmp_path: Path, still_running: bool
) -> None:
    path = tmp_path / "cancelled.json"
    path.write_text(json.dumps(cancelled_document(still_running)))
    [item] = history.import_files(engine, [path])
    task = engine.get(item.task_id)
    install = task.subtask("Install ocp agent")
    h = history.task_history(engine, item.task_id)
    mine = [e for e in h.events if e.subtask_id == install.id]
    moves = [(e.kind, e.old_status, e.new_status, e.new_operation) for e in mine]
    expected = [
        ("promoted", "PENDING", "READY", "EXECUTE"),
        ("attempt_started", "READY", "RUNNING", "EXECUTE"),
        ("recorded", "RUNNING", "CANCELING", "EXECUTE"),
        ("cancel_running", "CANCELING", "RUNNING", "CANCEL"),
    ]
    if not still_running:
        expected.append(("attempt_ended", "RUNNING", "FAILED", "CANCEL"))
    assert moves == expected
    [attempt] = [a for a in h.attempts if a.subtask_id == install.id]
    assert attempt.operation.value == "EXECUTE" and attempt.worker == "xxx.xxx.xxx.xxx"
    if still_running:
        assert attempt.result is typed.Result.RUNNING and attempt.end is None
    else:
        assert attempt.result is typed.Result.CANCELLED
        assert attempt.duration == pytest.approx(52.182 - 36.821)
    # Replay: RUNNING / CANCEL is an intermediate state, not the end of the attempt.
    step = next(e.step for e in h.events if isinstance(e, typed.CancelRunning))
    during = {s.id: s for s in history.replay(engine, item.task_id, step=step).subtasks}
    assert (during[install.id].status.value, during[install.id].operation.value) == (
        "RUNNING",
        "CANCEL",
    )
    assert during[install.id].finish_time is None and during[install.id].start_time is not None
    assert history.replay(engine, item.task_id) == history.snapshot(engine, item.task_id)
    body = shown(engine, item.task_id)
    [sub] = [s for s in body["subtasks"] if s["id"] == install.id]
    assert (sub["status"], sub["operation"]) == (install.status.value, "CANCEL")
    assert ("finishTime" in sub) is not still_running
    # Its export, with OCP's path in the events, imports and reads the same.
    [copy_id] = import_export(engine, export_of(engine, item.task_id))
    again = history.task_history(engine, copy_id)
    assert [e.kind for e in again.events] == [e.kind for e in h.events]
    assert history.replay(engine, copy_id) == history.snapshot(engine, copy_id)


def _rewrite(text: str, change: Any) -> str:
    """An export with its event records replaced by ``change(events)``, counts and ids fixed."""
    lines = [json.loads(line) for line in text.splitlines()]
    events = change([r for r in lines if r["record"] == "event"])
    for number, event in enumerate(events, start=1):
        event["id"] = number
    head = [r for r in lines if r["record"] not in ("event", "log", "end")]
    logs = [r for r in lines if r["record"] == "log"]
    head[0]["counts"]["events"] = len(events)
    out = [*head, *events, *logs]
    out.append({"record": "end", "task_id": head[0]["task_id"], "lines": len(out) + 1})
    return "".join(json.dumps(r) + "\n" for r in out)


def _ocp_path(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """dagtask's CANCELING -> FAILED / CANCEL as OCP records it: -> RUNNING / CANCEL -> FAILED."""
    out: list[dict[str, Any]] = []
    for event in events:
        if event["old_status"] == "CANCELING" and event["new_status"] == "FAILED":
            out.append({**event, "new_status": "RUNNING", "message": None})
            out.append({**event, "old_status": "RUNNING", "old_operation": "CANCEL"})
        else:
            out.append(event)
    return out


def test_both_cancel_paths_give_the_same_attempt(tmp_path: Path) -> None:
    t = TemplateBuilder("Cancel me")
    t.add("wait", "tests.handlers.sleep_with_token")
    with Engine(f"sqlite:///{tmp_path / 'run.db'}", workers=1, poll_interval=0.05) as engine:
        engine.start()
        task = engine.submit(t.build(), args={"seconds": "30"})
        sub = task.subtask("wait")
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while engine.get(task.id).subtask("wait").status.value != "RUNNING":
            assert datetime.now(UTC) < deadline
            time.sleep(0.02)
        engine.cancel_subtask(task.id, sub.id, operator="alice")
        done = engine.wait(task.id, timeout=15)
        assert (done.subtask("wait").status.value, done.status.value) == ("FAILED", "FAILED")
        buffer = io.StringIO()
        history.export_task(engine, task.id, buffer)
        theirs = history.task_history(engine, task.id)
    # dagtask's own path: CANCELING -> FAILED / CANCEL.
    moves = [(e.old_status, e.new_status, e.new_operation) for e in theirs.events if e.subtask_id]
    assert moves[-2:] == [("RUNNING", "CANCELING", "EXECUTE"), ("CANCELING", "FAILED", "CANCEL")]
    # The same history along OCP's path imports, replays and reads as the same attempt.
    path = tmp_path / "ocp-path.jsonl"
    path.write_text(_rewrite(buffer.getvalue(), _ocp_path))
    with Engine(f"sqlite:///{tmp_path / 'copy.db'}", workers=0) as target:
        [item] = history.import_files(target, [path])
        h = history.task_history(target, item.task_id)
        kinds = [e.kind for e in h.events if e.subtask_id is not None]
        assert kinds[-3:] == ["operator", "cancel_running", "attempt_ended"]
        assert [a.model_dump(exclude={"subtask_id"}) for a in h.attempts] == [
            a.model_dump(exclude={"subtask_id"}) for a in theirs.attempts
        ]
        [attempt] = h.attempts
        assert attempt.result is typed.Result.CANCELLED
        assert attempt.cancel_requested_by == "alice"
        assert [a.action.value for a in h.actions] == ["cancel subtask"]
        for step in range(len(h.events) + 1):
            replayed = history.replay(target, item.task_id, step=step)
            [state] = replayed.subtasks
            if state.status.value == "RUNNING" and state.operation.value == "CANCEL":
                assert state.finish_time is None and state.message is None
        assert history.replay(target, item.task_id) == history.snapshot(target, item.task_id)


# ---- bad documents: one clear line ---------------------------------------------------------------


def test_a_bad_prohibit_rollback_is_one_clear_line(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads((SAMPLES / "task-detail.json").read_text())
    document["data"]["prohibitRollback"] = "yes"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(ArgumentError) as caught:
        history.import_files(engine, [bad])
    message = str(caught.value)
    assert message == (
        'bad.json $.data: prohibitRollback must be true or false, got "yes"; nothing was imported'
    )
    document["data"]["prohibitRollback"] = False
    document["data"]["subtasks"][2]["prohibitRollback"] = 1
    bad.write_text(json.dumps(document))
    with pytest.raises(ArgumentError, match=r"\$\.data\.subtasks\[2\]: prohibitRollback must be"):
        history.import_files(engine, [bad])
    assert engine.list().total_elements == 0
    # The command line prints it as one line and exits 2.
    capsys.readouterr()
    code = main(["--db", f"sqlite:///{tmp_path / 'cli.db'}", "import", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "prohibitRollback" in err


def _origin_edit(text: str, change: Any) -> str:
    return "".join(
        json.dumps(change(json.loads(line))) + "\n"
        if json.loads(line)["record"] == "origin"
        else line + "\n"
        for line in text.splitlines()
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda r: {**r, "task_id": 1},
            r"line 3: the origin record names OCP task 1 but its document is task 35000312",
        ),
        (lambda r: {**r, "extra": 1}, r"line 3: invalid origin record: extra: Extra inputs"),
        (lambda r: {**r, "format": "dagtask"}, r"line 3: invalid origin record: format: "),
        (lambda r: {**r, "document": "{}"}, r"line 3: invalid origin record: document: "),
    ],
    ids=["other-task", "unknown-key", "wrong-format", "not-an-object"],
)
def test_a_corrupt_origin_record_is_one_clear_line(
    engine: Engine, tmp_path: Path, change: Any, expected: str
) -> None:
    [item] = history.import_files(engine, [SAMPLES / "task-detail.json"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_origin_edit(export_of(engine, item.task_id), change))
    with pytest.raises(ArgumentError, match=expected) as caught:
        history.import_files(engine, [bad])
    assert "\n" not in str(caught.value) and str(caught.value).startswith("bad.jsonl line 3: ")
    assert str(caught.value).endswith("nothing was imported")


def test_an_origin_record_out_of_place_is_refused(engine: Engine, tmp_path: Path) -> None:
    [item] = history.import_files(engine, [SAMPLES / "task-detail.json"])
    lines = export_of(engine, item.task_id).splitlines()
    origin = lines.pop(2)
    lines.insert(4, origin)  # after the first subtask records
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ArgumentError, match="line 5: an origin record after the subtask/"):
        history.import_files(engine, [bad])
    lines.pop(4)
    lines[2:2] = [origin, origin]  # two of them (and an end record that counts them)
    lines[-1] = json.dumps({**json.loads(lines[-1]), "lines": len(lines)})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ArgumentError, match="at most one template and one origin"):
        history.import_files(engine, [bad])


def test_a_task_list_shows_what_ocp_sent_for_imported_tasks(engine: Engine) -> None:
    """The list (query-task-list.json's shape) shows the creator, cluster and tenant objects of
    imported tasks too, read from their origin; a native task beside them keeps its string."""
    document = json.loads((SAMPLES / "query-task-list.json").read_text())
    sent = {item["name"]: item for item in document["data"]["contents"]}
    history.import_files(engine, [SAMPLES / "query-task-list.json"])
    t = TemplateBuilder("native")
    t.add("a", "tests.handlers.record")
    engine.submit(t.build(), creator="alice")
    listed = views.task_list_json(engine.list(size=10))["contents"]
    by_name = {item["name"]: item for item in listed}
    assert by_name["native"]["creator"] == "alice"
    assert "cluster" not in by_name["native"] and "tenant" not in by_name["native"]
    for name, original in sent.items():
        for key in ("creator", "cluster", "tenant"):
            if isinstance(original.get(key), dict):
                assert by_name[name][key] == original[key], (name, key)
