"""Agent kinds (how a remote agent's processes are found and started) and the remote wait loop's
arithmetic; no SSH server needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagtask.errors import ArgumentError
from dagtask.hosts import remote
from dagtask.hosts.kinds import OCP, AgentKind, agent_kind, known_kinds, load_kinds


def test_builtin_kinds_and_their_rendering() -> None:
    assert {"ocp", "systemd"} <= set(known_kinds())
    assert OCP.render(OCP.pid_file or "", "/home/admin/ocp agent", "ocp_agentd") == (
        "'/home/admin/ocp agent'/run/ocp_agentd.pid"
    )
    # A home with shell syntax stays one quoted word.
    assert OCP.render("{home}/bin/{process}", "/x; rm -rf /", "p") == "'/x; rm -rf /'/bin/p"
    assert OCP.render(OCP.last_log, "/h", "p") == "tail -n 1 /h/log/p.log"


def test_a_kinds_file_is_loaded_and_its_mistakes_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "kinds.yaml"
    good.write_text(
        "kinds:\n  - name: mine\n    processes: [a, b]\n    start: '{home}/bin/{process} -d'\n"
    )
    monkeypatch.setenv("DAGTASK_AGENT_KINDS", str(good))
    assert agent_kind("mine").processes == ("a", "b")
    cases = {
        "kinds: 3\n": "must hold `kinds:`",
        "kinds:\n  - name: x\n    start: '{nope}'\n": "kinds[0]: start uses {nope}",
        "kinds:\n  - name: x\n    status: 'cat f'\n": "give exactly one of pid_file and status",
        "kinds:\n  - name: x\n    colour: red\n": "kinds[0].colour: Extra inputs",
        "kinds:\n  - name: x\n    processes: []\n": "at least one process",
    }
    for text, expected in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ArgumentError, match=expected.replace("[", r"\[").replace("{", r"\{")):
            load_kinds(bad)
    with pytest.raises(ArgumentError, match="agent kind 'nope' is not known \\(known: mine, ocp"):
        agent_kind("nope")


def test_a_status_kind_needs_no_pid_file() -> None:
    kind = AgentKind(
        name="svc", pid_file=None, status="systemctl show -p MainPID --value {process}"
    )
    assert kind.render(kind.status or "", "/h", "ocp_agentd").endswith(" ocp_agentd")


@given(st.floats(min_value=0, max_value=3600, allow_nan=False))
def test_a_remote_wait_loop_covers_its_seconds(seconds: float) -> None:
    looks = remote._rounds(seconds)
    slept = sum(
        remote.FAST_POLL_SECONDS if i < remote.FAST_POLLS else remote.POLL_SECONDS
        for i in range(looks)
    )
    assert slept >= seconds - 1e-9
    assert slept < seconds + remote.POLL_SECONDS + 1e-9
