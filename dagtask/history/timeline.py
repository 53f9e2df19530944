"""Timeline pictures of a task: every attempt of every subtask on one time axis.

:func:`html_page` is a self-contained page (inline SVG, CSS and a few lines of JavaScript, no
external resources): one row per subtask in topological order, one bar per attempt coloured by
its operation and outlined by its result, a hover box with the attempt's details (a native
``<title>`` tooltip too, for viewers without JavaScript), and a mark for each operator action.
:func:`terminal` is the same picture in text, one line per subtask.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from dagtask.models import TaskInfo
from dagtask.states import Operation

from . import typed as ev

COLOURS = {
    Operation.EXECUTE: "#3b82f6",
    Operation.RETRY: "#8b5cf6",
    Operation.ROLLBACK: "#f59e0b",
    Operation.SKIP: "#9ca3af",
    Operation.ROLLBACK_SKIP: "#d6b56a",
    Operation.CANCEL: "#6b7280",
}
RESULT_STYLE = {
    ev.Result.SUCCEEDED: ("#15803d", ""),
    ev.Result.FAILED: ("#dc2626", ""),
    ev.Result.CANCELLED: ("#dc2626", "4 2"),
    ev.Result.LOST: ("#7c2d12", "1 2"),
    ev.Result.RUNNING: ("#111827", "2 2"),
}
LETTERS = {
    Operation.EXECUTE: "E",
    Operation.RETRY: "R",
    Operation.ROLLBACK: "B",
    Operation.SKIP: "S",
    Operation.ROLLBACK_SKIP: "K",
    Operation.CANCEL: "C",
}


def _rows(task: TaskInfo) -> list[tuple[int, str]]:
    """(subtask id, label) in topological order (roots first), as ``dagtask show`` lists them."""
    names = ev.labels(task)
    subs = sorted(task.subtasks, key=lambda s: (-s.series_id, s.id))
    return [(s.id, names[s.id]) for s in subs]


def _span(
    attempts: Sequence[ev.Attempt], history: Sequence[ev.HistoryEvent], now: datetime
) -> tuple[datetime, datetime]:
    times = [e.time for e in history] + [a.start for a in attempts]
    times += [a.end or now for a in attempts]
    start = min(times) if times else now
    end = max(times) if times else now
    return start, max(end, start + timedelta(seconds=1) if end <= start else end)


def _stamp(when: datetime) -> str:
    return when.replace(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _details(a: ev.Attempt) -> str:
    lines = [
        f"{a.subtask}: {a.operation.value} attempt {a.run_time}",
        f"result: {a.result.value}",
        f"worker: {a.worker or '?'}",
        f"start: {_stamp(a.start)}",
        f"end: {_stamp(a.end) if a.end else '(not ended)'}",
        f"duration: {a.duration:.3f} s" if a.duration is not None else "duration: -",
    ]
    if a.error:
        lines.append(f"error: {a.error}")
    if a.cancel_requested_by:
        lines.append(f"cancel requested by {a.cancel_requested_by}")
    if a.retried_automatically:
        lines.append("retried automatically")
    return "\n".join(lines)


def html_page(
    task: TaskInfo,
    history: Sequence[ev.HistoryEvent],
    *,
    now: datetime | None = None,
) -> str:
    """A self-contained HTML page with the task's Gantt chart."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    attempts = ev.attempts(history)
    actions = ev.actions(history)
    rows = _rows(task)
    start, end = _span(attempts, history, now)
    total = (end - start).total_seconds() or 1.0
    label_w, chart_w, row_h, top = 260, 900, 26, 40
    height = top + row_h * max(len(rows), 1) + 30
    width = label_w + chart_w + 20

    def x(when: datetime) -> float:
        return label_w + chart_w * (when - start).total_seconds() / total

    index = {sid: i for i, (sid, _) in enumerate(rows)}
    parts: list[str] = []
    for i, (_sid, label) in enumerate(rows):
        y = top + i * row_h
        parts.append(
            f'<rect class="band" x="0" y="{y}" width="{width}" height="{row_h}" '
            f'fill="{"#f9fafb" if i % 2 else "#ffffff"}"/>'
            f'<text class="label" x="6" y="{y + row_h * 0.65:.1f}">{html.escape(label)}</text>'
        )
    for tick in range(6):
        when_s = total * tick / 5
        tx = label_w + chart_w * tick / 5
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{height - 24}" class="grid"/>'
            f'<text class="tick" x="{tx:.1f}" y="{top - 10}">+{when_s:.2f} s</text>'
        )
    for a in attempts:
        if a.subtask_id not in index:
            continue
        y = top + index[a.subtask_id] * row_h + 4
        x0 = x(a.start)
        x1 = max(x(a.end or now), x0 + 3)
        stroke, dash = RESULT_STYLE[a.result]
        details = _details(a)
        parts.append(
            f'<rect class="attempt" x="{x0:.1f}" y="{y}" width="{x1 - x0:.1f}" '
            f'height="{row_h - 8}" rx="3" fill="{COLOURS[a.operation]}" stroke="{stroke}" '
            f'stroke-width="2" stroke-dasharray="{dash}" data-op="{a.operation.value}" '
            f'data-result="{a.result.value}" data-details="{html.escape(details, quote=True)}">'
            f"<title>{html.escape(details)}</title></rect>"
        )
    for act in actions:
        ax = x(act.time)
        text = f"{act.action.value} by {act.operator} at {_stamp(act.time)}"
        if act.task_status_before:
            text += f" (task was {act.task_status_before} / {act.task_operation_before})"
        parts.append(
            f'<line class="action" x1="{ax:.1f}" y1="{top - 4}" x2="{ax:.1f}" y2="{height - 24}" '
            f'data-details="{html.escape(text, quote=True)}"><title>{html.escape(text)}</title>'
            "</line>"
        )
    legend = "".join(
        f'<span class="key"><i style="background:{colour}"></i>{op.value}</span>'
        for op, colour in COLOURS.items()
    ) + "".join(
        f'<span class="key"><i style="border:2px {"dashed" if dash else "solid"} {colour};'
        f'background:#fff"></i>{result.value}</span>'
        for result, (colour, dash) in RESULT_STYLE.items()
    )
    title = f"Task {task.id} {task.name}: {task.status.value} ({task.operation.value})"
    summary = (
        f"{len(attempts)} attempts of {len(rows)} subtasks, {len(actions)} operator actions; "
        f"{_stamp(start)} to {_stamp(end)}"
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'
        + "".join(parts)
        + "</svg>"
    )
    data = json.dumps({"task": task.id, "attempts": len(attempts)})
    return _PAGE.format(
        title=html.escape(title), summary=html.escape(summary), legend=legend, svg=svg, data=data
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #111827; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.summary {{ color: #4b5563; margin-bottom: 12px; }}
.legend {{ margin: 8px 0 16px; }}
.key {{ margin-right: 14px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 14px; height: 10px; margin-right: 4px;
  vertical-align: middle; border-radius: 2px; }}
svg {{ border: 1px solid #e5e7eb; }}
.label {{ font-size: 12px; fill: #111827; }}
.tick {{ font-size: 11px; fill: #6b7280; text-anchor: middle; }}
.grid {{ stroke: #e5e7eb; }}
.action {{ stroke: #dc2626; stroke-width: 2; stroke-dasharray: 3 3; cursor: help; }}
.attempt {{ cursor: help; }}
.attempt:hover {{ opacity: 0.8; }}
#tip {{ position: fixed; display: none; background: #111827; color: #f9fafb; padding: 6px 8px;
  border-radius: 4px; font-size: 12px; white-space: pre; pointer-events: none; }}
</style></head>
<body>
<h1>{title}</h1>
<div class="summary">{summary}</div>
<div class="legend">{legend}</div>
{svg}
<div id="tip"></div>
<script type="application/json" id="timeline-data">{data}</script>
<script>
(function () {{
  var tip = document.getElementById("tip");
  document.querySelectorAll("[data-details]").forEach(function (el) {{
    el.addEventListener("mousemove", function (e) {{
      tip.textContent = el.getAttribute("data-details");
      tip.style.display = "block";
      tip.style.left = (e.clientX + 12) + "px";
      tip.style.top = (e.clientY + 12) + "px";
    }});
    el.addEventListener("mouseleave", function () {{ tip.style.display = "none"; }});
  }});
}})();
</script>
</body></html>
"""


def terminal(
    task: TaskInfo,
    history: Sequence[ev.HistoryEvent],
    *,
    width: int = 60,
    colour: bool = False,
    now: datetime | None = None,
) -> str:
    """The timeline as text: one line per subtask, one letter per time slot of an attempt
    (E execute, R retry, B rollback, S skip, K rollback skip; lower case: the attempt failed, was
    cancelled or lost its worker; ``>``: still running), then its attempts and last result."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    attempts = ev.attempts(history)
    rows = _rows(task)
    start, end = _span(attempts, history, now)
    total = (end - start).total_seconds() or 1.0
    name_w = min(max((len(label) for _, label in rows), default=4), 32)
    lines = [
        f"task {task.id} {task.name}: {task.status.value} ({task.operation.value}), "
        f"{_stamp(start)} .. {_stamp(end)} ({total:.3f} s; one column = {total / width:.3f} s)"
    ]
    for sid, label in rows:
        cells = [" "] * width
        mine = [a for a in attempts if a.subtask_id == sid]
        for a in mine:
            first = min(int((a.start - start).total_seconds() / total * width), width - 1)
            last = min(int(((a.end or now) - start).total_seconds() / total * width), width - 1)
            letter = LETTERS[a.operation]
            if a.result in (ev.Result.FAILED, ev.Result.CANCELLED, ev.Result.LOST):
                letter = letter.lower()
            for i in range(first, max(last, first) + 1):
                cells[i] = _paint(letter if a.result is not ev.Result.RUNNING else ">", a, colour)
        if mine:
            final = mine[-1]
            tail = f"{len(mine)} attempt{'s' if len(mine) > 1 else ''}, last {final.result.value}"
            if final.error:
                tail += f": {' '.join(final.error.split())[:60]}"
        else:
            tail = "never ran"
        lines.append(f"  {label[:name_w].ljust(name_w)} |{''.join(cells)}| {tail}")
    for act in ev.actions(history):
        lines.append(f"  action at {_stamp(act.time)}: {act.action.value} by {act.operator}")
    lines.append(
        "  E execute, R retry, B rollback, S skip, K rollback skip; lower case: failed, "
        "cancelled or lost; > running"
    )
    return "\n".join(lines)


def _paint(letter: str, attempt: ev.Attempt, colour: bool) -> str:
    if not colour:
        return letter
    code = {
        ev.Result.SUCCEEDED: "32",
        ev.Result.FAILED: "31",
        ev.Result.CANCELLED: "35",
        ev.Result.LOST: "35",
        ev.Result.RUNNING: "33",
    }[attempt.result]
    return f"\033[{code}m{letter}\033[0m"
