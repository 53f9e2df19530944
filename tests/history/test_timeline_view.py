"""``dagtask timeline`` as a person sees it: the text fits the terminal without cutting names,
and the HTML page keeps a retry and a rollback minutes later readable.

The history is real: a task runs on in-process workers (its handlers sleep a little so each
attempt has a length), a subtask fails, alice retries the task (it fails again) and dave rolls it
back. Waiting minutes between those steps would make the test slow, so afterwards the stored
times of everything from the retry on are moved 4 minutes later, and of everything from the
rollback on 6 minutes more (events, subtask and task times, logs): the history then reads as an
operator's would, a retry 4 minutes after the failure and a rollback 6 minutes after that.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask import Engine, RunContext, TaskStatus, TemplateBuilder
from dagtask.history import timeline
from dagtask.store import schema
from tests.history.conftest import Run

WAIT = 60.0
LONG = "upload-the-package-to-every-web-host-in-eu-1"  # 44 characters
RETRY_LATER = timedelta(minutes=4)
ROLLBACK_LATER = timedelta(minutes=6)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Slow:
    """Sleeps ``stringMap.pause`` seconds, then fails when named in ``stringMap.fail``; its
    rollback sleeps too."""

    def execute(self, ctx: RunContext) -> None:
        time.sleep(float(ctx.string_map.get("pause", "0.2")))
        if ctx.subtask_name in ctx.string_map.get("fail", "").split(","):
            raise RuntimeError(f"{ctx.subtask_name}: connection refused by 10.0.0.5:2022")

    def rollback(self, ctx: RunContext) -> None:
        time.sleep(float(ctx.string_map.get("pause", "0.2")))


@dataclass
class Late:
    """A task with a retry and a rollback minutes later, in a SQLite file."""

    url: str
    task_id: int
    names: list[str]


def shift_later(url: str, task_id: int, retry_at: datetime, rollback_at: datetime) -> None:
    """Move every stored time from ``retry_at`` on by RETRY_LATER, from ``rollback_at`` on by
    ROLLBACK_LATER more, as if the operators had acted that much later."""

    def moved(when: datetime | None) -> datetime | None:
        if when is None or when < retry_at:
            return when
        return when + RETRY_LATER + (ROLLBACK_LATER if when >= rollback_at else timedelta())

    db = sa.create_engine(url)
    with db.begin() as conn:
        for table, columns, key in (
            (schema.task_event, ["time"], schema.task_event.c.task_id),
            (schema.subtask, ["start_time", "finish_time"], schema.subtask.c.task_id),
            (schema.task, ["start_time", "finish_time"], schema.task.c.id),
        ):
            rows = conn.execute(
                sa.select(table.c.id, *[table.c[c] for c in columns]).where(key == task_id)
            )
            for row in rows.all():
                values = {c: moved(row._mapping[c]) for c in columns}
                conn.execute(sa.update(table).where(table.c.id == row.id).values(**values))
        logs = schema.subtask_log
        subtask_ids = sa.select(schema.subtask.c.id).where(schema.subtask.c.task_id == task_id)
        for row in conn.execute(
            sa.select(logs.c.id, logs.c.create_time).where(logs.c.subtask_id.in_(subtask_ids))
        ).all():
            conn.execute(
                sa.update(logs)
                .where(logs.c.id == row.id)
                .values(create_time=moved(row.create_time))
            )
    db.dispose()


@pytest.fixture(scope="module")
def late(tmp_path_factory: pytest.TempPathFactory) -> Late:
    """prepare -> (LONG, work) -> finish; ``work`` fails (one automatic retry), alice retries the
    task 4 minutes later (it fails again), dave rolls it back 6 minutes after that."""
    url = f"sqlite:///{tmp_path_factory.mktemp('late') / 'late.db'}"
    t = TemplateBuilder("Deploy web tier", concurrency=2)
    here = f"{__name__}.Slow"
    t.add("prepare", here)
    t.add(LONG, here, after=["prepare"])
    t.add("work", here, after=["prepare"], retry_count=1)
    t.add("finish", here, after=[LONG, "work"])
    with Engine(url, workers=2) as engine:
        task = engine.submit(t.build(), args={"fail": "work", "pause": "0.3"}, creator="carol")
        assert engine.run_task(task.id, WAIT).status is TaskStatus.FAILED
        engine.retry(task.id, operator="alice")
        assert engine.run_task(task.id, WAIT).status is TaskStatus.FAILED
        engine.rollback(task.id, operator="dave")
        final = engine.run_task(task.id, WAIT)
        assert final.status is TaskStatus.SUCCESSFUL
        acts = engine.history(task.id).actions
    retry_at, rollback_at = (a.time for a in acts)
    shift_later(url, task.id, retry_at, rollback_at)
    return Late(url, task.id, ["prepare", LONG, "work", "finish"])


def text_lines(dt: Run, late: Late, monkeypatch: pytest.MonkeyPatch, columns: int) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = dt("timeline", str(late.task_id), db=late.url)
    assert code == 0, err
    return [ANSI.sub("", line) for line in out.splitlines()]


@pytest.mark.parametrize("columns", [60, 100, 200])
def test_text_fits_the_terminal_and_keeps_whole_names(
    dt: Run, late: Late, monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    lines = text_lines(dt, late, monkeypatch, columns)
    assert max(len(line) for line in lines) <= columns, "\n".join(lines)
    assert columns - max(len(line) for line in lines) < 15, "uses the width it has"
    bars = [line for line in lines if re.fullmatch(r"\s*\|.*\|.*", line) or " |" in line]
    for name in late.names:
        assert any(re.match(rf"\s+{re.escape(name)}(:| +\|)", line) for line in lines), name
    # Two axis breaks mark the idle minutes; each phase still has room for its letters.
    assert "idle time left out: 3 min" in " ".join(lines) or "idle time left out: 4 min" in (
        " ".join(lines)
    )
    work = next(line for line in bars if "|" in line and ("e" in line.split("|")[1]))
    cells = work.split("|")[1]
    assert cells.count("//") == 2, work
    execute, retried, _rolled = cells.split("//")
    assert "e" in execute and "r" in retried, work  # failed EXECUTE, failed RETRY
    rolled_back = [line.split("|")[1].split("//")[-1] for line in lines if line.count("|") >= 2]
    assert sum("B" in part for part in rolled_back) >= 2, "prepare and the long one roll back"


def test_text_stacks_names_longer_than_the_terminal(late: Late) -> None:
    with Engine(late.url, workers=0) as engine:
        task = engine.get(late.task_id)
        events = engine.history(late.task_id).events
    text = timeline.terminal(task, events, width=30)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 30, text
    # The 44-character name is wrapped over two lines, never cut short.
    joined = "".join(line.strip() for line in lines)
    assert LONG in joined
    assert all(re.fullmatch(r" {4}\|.{24}\|", line) for line in lines if line.startswith("    |"))


def attempt_rects(page: str) -> list[dict[str, str]]:
    return [
        dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(0)))
        for m in re.finditer(r'<rect class="attempt"[^>]*>', page)
    ]


def pct(value: str) -> float:
    assert value.endswith("%"), value
    return float(value[:-1])


def test_html_keeps_a_later_retry_and_rollback_readable(
    dt: Run, late: Late, tmp_path: Path
) -> None:
    code, _, err = dt("timeline", str(late.task_id), "--html", "late.html", db=late.url)
    assert code == 0, err
    page = (tmp_path / "late.html").read_text()
    # Three phases on three segments, two breaks saying how long nothing happened.
    data = json.loads(re.search(r'id="timeline-data">(.*?)</script>', page).group(1))  # type: ignore[union-attr]
    assert data["segments"] == 3
    idle = re.findall(r'<text class="idle"[^>]*>([^<]*)</text>', page)
    assert len(idle) == 2 and all(re.fullmatch(r"\d min \d+ s idle", t) for t in idle), idle
    # No attempt is squeezed into a sliver: on a linear 10-minute axis a 0.3 s attempt would
    # be 0.05 % wide.
    rects = attempt_rects(page)
    ops = {r["data-op"] for r in rects}
    assert ops == {"EXECUTE", "RETRY", "ROLLBACK"}
    assert min(pct(r["width"]) for r in rects) > 1.5, sorted(pct(r["width"]) for r in rects)
    lefts = {op: [pct(r["x"]) for r in rects if r["data-op"] == op] for op in ops}
    assert (
        max(lefts["EXECUTE"]) < min(lefts["RETRY"]) < max(lefts["RETRY"]) < min(lefts["ROLLBACK"])
    )
    assert max(lefts["EXECUTE"]) < 40 and min(lefts["ROLLBACK"]) < 80
    # RETRY and ROLLBACK: distinct colours, both in the legend.
    fills = {r["data-op"]: r["fill"] for r in rects}
    assert len(set(fills.values())) == 3
    for op in ("RETRY", "ROLLBACK"):
        assert f'<i style="background:{fills[op]}"></i>{op}</span>' in page
    # Ticks on round values of a step in NICE_STEPS.
    ticks = re.findall(r'<text class="tick" [^>]*data-step="([\d.]+)"[^>]*>([^<]*)</text>', page)
    assert len(ticks) >= 3, ticks  # at least one per segment
    for step, label in ticks:
        seconds = parse_offset(label)
        assert float(step) in timeline.NICE_STEPS
        assert abs(seconds / float(step) - round(seconds / float(step))) < 1e-6, (label, step)
    # Fits the window: no fixed width anywhere; self-contained.
    assert '<svg xmlns="http://www.w3.org/2000/svg" width="100%"' in page
    assert not re.search(r'width="\d+"', page.split("<svg", 1)[1].split(">", 1)[0])
    assert not re.search(r"<link|<img|\bsrc=|url\(|@import", page)
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]
    assert "retry task by alice" in page and "roll back task by dave" in page


def parse_offset(label: str) -> float:
    """``+12.5s``, ``+5m``, ``+5m12s``, ``+1h05m`` back to seconds."""
    found = re.fullmatch(r"\+(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", label)
    assert found and any(found.groups()), label
    hours, minutes, seconds = (float(g) if g else 0.0 for g in found.groups())
    return hours * 3600 + minutes * 60 + seconds


def test_a_run_without_idle_gaps_keeps_one_linear_axis(dt: Run, tmp_path: Path) -> None:
    t = TemplateBuilder("Quick", concurrency=1)
    t.add("one", f"{__name__}.Slow")
    t.add("two", f"{__name__}.Slow", after=["one"])
    url = f"sqlite:///{tmp_path / 'quick.db'}"
    with Engine(url, workers=1) as engine:
        done = engine.run(t.build(), args={"pause": "0.2"}, timeout=WAIT)
    code, _, err = dt("timeline", str(done.id), "--html", "q.html", db=url)
    assert code == 0, err
    page = (tmp_path / "q.html").read_text()
    assert '"segments": 1' in page and 'class="gap"' not in page
    one, two = attempt_rects(page)
    # Linear: the second starts where the first ends, and together they span the plot (from
    # the submit, a few milliseconds before the first claim).
    assert pct(one["x"]) < 10
    assert pct(two["x"]) == pytest.approx(pct(one["x"]) + pct(one["width"]), abs=3)
    assert pct(two["x"]) + pct(two["width"]) == pytest.approx(100, abs=3)


@pytest.mark.parametrize(
    ("seconds", "step", "text"),
    [
        (0, 1, "+0s"),
        (12.5, 0.5, "+12.5s"),
        (0.25, 0.05, "+0.25s"),
        (300, 60, "+5m"),
        (312, 1, "+5m12s"),
        (312.4, 0.2, "+5m12.4s"),
        (3900, 300, "+1h05m"),
    ],
)
def test_offsets_read_as_round_values(seconds: float, step: float, text: str) -> None:
    assert timeline.offset(seconds, step) == text
    assert parse_offset(text) == pytest.approx(seconds)


def test_ticks_fall_on_multiples_of_a_nice_step() -> None:
    seg = timeline.Segment(start=312.37, end=318.9, left=0.5, right=0.8)
    step, times = timeline.ticks(seg, pixels=300)
    assert step in (1, 2) and times[0] >= 312.37 and times[-1] <= 318.9
    assert all(t % step == 0 for t in times)
    assert len(times) >= 3
