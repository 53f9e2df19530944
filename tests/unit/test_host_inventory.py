"""The host inventory on a SQLite file: what a caller of HostInventory sees."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dagtask.errors import ArgumentError, HostError, HostNotFoundError
from dagtask.hosts.connector import connector_for
from dagtask.hosts.inventory import AgentStatus, HostInventory, HostStatus
from dagtask.hosts.local import LocalConnector
from dagtask.hosts.remote import SshConnector
from dagtask.models import SshAccess
from dagtask.store.db import open_database


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[HostInventory]:
    db = open_database("sqlite:///" + str(tmp_path / "t.db"))
    yield HostInventory(db)
    db.dispose()


def test_add_then_get_returns_the_same_host(inventory: HostInventory, tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    added = inventory.add("db1", "10.0.0.1", str(tmp_path / "agent"))
    got = inventory.get(added.id)
    assert got == added
    assert (got.name, got.inner_ip, got.connector) == ("db1", "10.0.0.1", "local")
    assert (got.status, got.agent_status) == ("ONLINE", "UNKNOWN")  # never looked at
    assert got.create_time.tzinfo is None, "times are naive UTC"
    assert before - timedelta(seconds=1) <= got.create_time <= before + timedelta(minutes=1)
    assert inventory.get_by_name("db1") == added


def test_local_agent_home_is_made_absolute(
    inventory: HostInventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    host = inventory.add("db1", "10.0.0.1", "agent")
    assert host.agent_home == str(tmp_path / "agent")


def test_unknown_id_and_name_are_host_not_found(inventory: HostInventory) -> None:
    with pytest.raises(HostNotFoundError, match=r"host 7 does not exist; .*dagtask hosts list"):
        inventory.get(7)
    with pytest.raises(HostNotFoundError, match="no host is named 'nope'"):
        inventory.get_by_name("nope")
    with pytest.raises(HostNotFoundError, match="host 7 does not exist"):
        inventory.set_agent_status(7, AgentStatus.STOPPED)
    with pytest.raises(HostNotFoundError, match="host 7 does not exist"):
        inventory.set_status(7, HostStatus.OFFLINE)


def test_duplicate_name_is_a_host_error_naming_the_existing_host(
    inventory: HostInventory,
) -> None:
    first = inventory.add("db1", "10.0.0.1", "/opt/agent")
    with pytest.raises(HostError, match=rf"'db1' already exists \(id {first.id}\)") as info:
        inventory.add("db1", "10.0.0.2", "/opt/agent")
    assert not isinstance(info.value, HostNotFoundError)
    assert [h.inner_ip for h in inventory.list()] == ["10.0.0.1"]


def test_list_is_ordered_by_id(inventory: HostInventory) -> None:
    ids = [inventory.add(f"h{i}", f"10.0.0.{i}", "/opt/agent").id for i in (3, 1, 2)]
    assert [h.id for h in inventory.list()] == sorted(ids)
    assert [h.name for h in inventory.list()] == ["h3", "h1", "h2"]


def test_set_agent_status_returns_the_previous_status(inventory: HostInventory) -> None:
    host = inventory.add("db1", "10.0.0.1", "/opt/agent")
    assert inventory.set_agent_status(host.id, AgentStatus.STOPPING) is AgentStatus.UNKNOWN
    assert inventory.set_agent_status(host.id, "STOPPED") is AgentStatus.STOPPING
    changed = inventory.get(host.id)
    assert changed.agent_status == "STOPPED"
    assert changed.update_time >= host.update_time
    assert inventory.agent_status(host.id) is AgentStatus.STOPPED


def test_conditional_set_refuses_when_the_status_moved(inventory: HostInventory) -> None:
    host = inventory.add("db1", "10.0.0.1", "/opt/agent", agent_status=AgentStatus.STARTING)
    with pytest.raises(HostError, match="agent status is STARTING, not ONLINE as expected"):
        inventory.set_agent_status(host.id, AgentStatus.STOPPING, expected=AgentStatus.ONLINE)
    assert inventory.agent_status(host.id) is AgentStatus.STARTING
    previous = inventory.set_agent_status(host.id, AgentStatus.ONLINE, AgentStatus.STARTING)
    assert previous is AgentStatus.STARTING
    assert inventory.agent_status(host.id) is AgentStatus.ONLINE


def test_set_status(inventory: HostInventory) -> None:
    host = inventory.add("db1", "10.0.0.1", "/opt/agent")
    assert inventory.set_status(host.id, HostStatus.OFFLINE) is HostStatus.ONLINE
    assert inventory.get(host.id).status == "OFFLINE"
    assert inventory.get(host.id).agent_status == "UNKNOWN", "the agent status is separate"


def test_invalid_status_values_are_refused_with_the_valid_ones(inventory: HostInventory) -> None:
    with pytest.raises(ArgumentError, match="'RUNNING' is not a valid agent status; use one of"):
        inventory.add("db1", "10.0.0.1", "/opt/agent", agent_status="RUNNING")
    with pytest.raises(ArgumentError, match="not a valid host status; use one of ONLINE, OFFLINE"):
        inventory.add("db1", "10.0.0.1", "/opt/agent", status="DOWN")
    host = inventory.add("db1", "10.0.0.1", "/opt/agent")
    with pytest.raises(ArgumentError, match="not a valid agent status"):
        inventory.set_agent_status(host.id, "stopped")
    assert inventory.list() == [host]


def test_empty_name_is_refused(inventory: HostInventory) -> None:
    with pytest.raises(ArgumentError, match="non-empty name"):
        inventory.add(" ", "10.0.0.1", "/opt/agent")


def test_connector_for_picks_by_kind(inventory: HostInventory) -> None:
    local = inventory.add("db1", "10.0.0.1", "/opt/agent")
    assert isinstance(connector_for(local), LocalConnector)
    access = SshAccess(user="admin", auth="agent")
    remote = inventory.add("db2", "10.0.0.2", "/opt/agent", connector="ssh", ssh=access)
    assert isinstance(connector_for(remote), SshConnector)
    odd = inventory.add("db3", "10.0.0.3", "/opt/agent", connector="telnet")
    with pytest.raises(
        HostError, match=r"connector 'telnet', which dagtask does not know \(known: local, ssh"
    ):
        connector_for(odd)
    with pytest.raises(ArgumentError, match="ssh connector but says nothing of how to log in"):
        inventory.add("db4", "10.0.0.4", "/opt/agent", connector="ssh")
    with pytest.raises(ArgumentError, match="must be an absolute path on the remote host"):
        inventory.add("db4", "10.0.0.4", "opt/agent", connector="ssh", ssh=access)
    with pytest.raises(ArgumentError, match="SSH settings need --connector ssh"):
        inventory.add("db4", "10.0.0.4", "/opt/agent", ssh=access)
    assert [h.name for h in inventory.list()] == ["db1", "db2", "db3"]


def test_concurrent_conditional_sets_let_exactly_one_win(inventory: HostInventory) -> None:
    host = inventory.add("db1", "10.0.0.1", "/opt/agent", agent_status=AgentStatus.STOPPED)
    outcomes: list[str] = []

    def start() -> None:
        try:
            inventory.set_agent_status(host.id, AgentStatus.STARTING, AgentStatus.STOPPED)
            outcomes.append("won")
        except HostError:
            outcomes.append("refused")

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]
    assert inventory.agent_status(host.id) is AgentStatus.STARTING
