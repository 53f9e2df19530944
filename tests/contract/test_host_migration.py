"""Migration 0005 (remote hosts) on a database that already holds hosts, on every backend."""

from __future__ import annotations

from pathlib import Path

from alembic import command

from dagtask import Engine
from dagtask.hosts.access import make_access
from dagtask.store import db as dbmod


def test_upgrade_from_0004_keeps_hosts_and_adds_ssh_settings(db_url: str, tmp_path: Path) -> None:
    with Engine(db_url, workers=0) as engine:
        local = engine.hosts.add("old", "127.0.0.1", str(tmp_path / "agent"))
    database = dbmod.Database(db_url)
    config = dbmod.alembic_config(db_url)
    with database.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    assert dbmod.current_revision(database) == "0004"
    assert dbmod.upgrade(database) == ("0004", dbmod.head_revision())
    database.dispose()
    key = tmp_path / "id"
    key.write_text("not really a key")
    with Engine(db_url, workers=0) as engine:
        again = engine.hosts.get(local.id)
        assert (again.name, again.agent_kind, again.ssh, again.host_key) == (
            "old",
            "ocp",
            None,
            None,
        )
        access = make_access("new", user="admin", port=2222, key_file=str(key), jump_host=None)
        remote = engine.hosts.add(
            "new", "10.0.0.5", "/home/admin/agent", connector="ssh", ssh=access
        )
        engine.hosts.set_host_key(remote.id, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBase")
        stored = engine.hosts.get(remote.id)
        assert stored.ssh == access and stored.host_key is not None
        assert stored.ssh.port == 2222 and stored.ssh.auth == "key"
