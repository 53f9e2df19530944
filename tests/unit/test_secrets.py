"""The secret-key rule and the masking functions of dagtask.secrets."""

from __future__ import annotations

import pytest

from dagtask import secrets
from dagtask.context import TaskContext
from dagtask.secrets import (
    MASK,
    is_secret_key,
    mask_context,
    mask_json,
    mask_text,
    register_secret_keys,
    secret_values,
)


@pytest.fixture(autouse=True)
def _no_extra_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(secrets.ENV_VAR, raising=False)
    monkeypatch.setattr(secrets, "_registered", set())


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "DB_PASSWORD",
        "api_token",
        "secret_key",
        "ssh_key",
        "access_key",
        "apiKey",
        "root_passwd",
        "sys_pwd",
        "aws_credentials",
        "ClientSecret",
        "host_key",  # an SSH host key is public, but the rule is a substring: masked
    ],
)
def test_keys_naming_a_secret_are_secret(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["host_id", "host_ids", "cluster", "user", "task_instance_id", "port", "agent_home"]
)
def test_other_keys_are_not(key: str) -> None:
    assert not is_secret_key(key)


def test_more_keys_are_made_secret_by_the_environment_and_by_registration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not is_secret_key("db_dsn")
    assert not is_secret_key("license_file")
    monkeypatch.setenv(secrets.ENV_VAR, " DSN , ,other")
    assert is_secret_key("db_dsn")
    assert not is_secret_key("license_file")
    register_secret_keys("License")
    assert is_secret_key("LICENSE_FILE")


def test_mask_context_masks_string_and_list_values_and_keeps_the_rest() -> None:
    ctx = TaskContext(
        string_map={"db_password": "hunter22", "user": "root"},
        list_map={"ssh_keys": ["k1", "k2"], "host_ids": ["1", "2"]},
        parallel=True,
        parallel_idx=1,
    )
    masked = mask_context(ctx)
    assert masked.string_map == {"db_password": MASK, "user": "root"}
    assert masked.list_map == {"ssh_keys": [MASK, MASK], "host_ids": ["1", "2"]}
    assert (masked.parallel, masked.parallel_idx) == (True, 1)
    assert ctx.string_map["db_password"] == "hunter22"  # the original is untouched


def test_mask_json_masks_ocp_context_json_and_leaves_other_values_alone() -> None:
    given = {"stringMap": {"api_token": "t0ken!", "name": "x"}, "listMap": {"tokens": ["a"]}}
    assert mask_json(given) == {
        "stringMap": {"api_token": MASK, "name": "x"},
        "listMap": {"tokens": [MASK]},
    }
    assert given["stringMap"]["api_token"] == "t0ken!"
    assert mask_json(None) is None
    assert mask_json("text") == "text"


def test_mask_text_replaces_secret_values_also_in_repr_and_json_spellings() -> None:
    ctx = TaskContext(string_map={"password": "it's\\secret", "user": "root", "token": "abc"})
    line = f"Run subtask, context={ctx.to_json()}, executor=w"  # a Python repr, quotes escaped
    masked = mask_text(line, ctx)
    assert "secret" not in masked.replace("'password'", "")
    assert MASK in masked
    assert "root" in masked  # not a secret
    assert "abc" in masked  # shorter than MIN_TEXT_SECRET: not searched for in text
    assert mask_text('{"password": "it\'s\\\\secret"}', ctx) == '{"password": "******"}'


def test_secret_values_are_longest_first_so_a_longer_value_is_masked_whole() -> None:
    ctx = TaskContext(string_map={"pwd": "abcd", "db_pwd": "abcdefgh"})
    assert secret_values(ctx) == ["abcdefgh", "abcd"]
    assert mask_text("x abcdefgh y abcd", ctx) == f"x {MASK} y {MASK}"
