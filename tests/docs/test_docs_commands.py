"""Every command in the documentation works as written.

The convention, for README.md, docs/*.md and examples/README.md:

- A fenced block tagged ``sh`` is run with bash (``set -eo pipefail``), one ``python`` block with
  the project's Python, both in the document's order, in the document's own fresh folder (the
  ``examples/`` folder copied in, as in a fresh clone), with ``$DAGTASK_DB_URL`` pointing at a
  fresh SQLite file there and the virtualenv's ``dagtask`` first on ``PATH``. A block fails the
  test when it exits non-zero or runs longer than :data:`BLOCK_TIMEOUT`.
- The line just before a fence may say what to do with it, visibly in the markdown:
  ``<!-- not run: REASON -->`` skips the block (each one is listed as a skipped test item with its
  reason); ``<!-- file: NAME -->`` writes the block to NAME in the folder instead of running it (a
  module a later block imports); ``<!-- db: postgresql -->`` runs it against a fresh PostgreSQL
  schema instead of the SQLite file.
- ``bash``, ``shell``, ``console``, ``zsh`` fences are refused: a shell recipe is either run
  (``sh``) or marked; output is shown in ``text`` blocks. Every other fence (``text``, ``yaml``,
  ``json``, none) is data and never run.

Each block runs in its own process group, killed at the end, so a background ``dagtask worker &``
a block forgot to stop cannot outlive it; agent processes started under the folder are killed when
the document ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    REPO_ROOT / "README.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
    REPO_ROOT / "examples" / "README.md",
]
BLOCK_TIMEOUT = 45.0
"""Seconds one block may run; the slowest (the demo, a REST session) take a few."""

RUN_LANGUAGES = {"sh", "python"}
REFUSED_LANGUAGES = {"bash", "shell", "console", "zsh"}
FENCE = re.compile(r"^( *)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(not run|file|db):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a document."""

    document: Path
    line: int
    """1-based line of the opening fence."""
    language: str
    text: str
    marker: str = ""
    """``not run``, ``file`` or ``db`` (from the comment just before the fence), else ""."""
    value: str = ""
    """The marker's argument: the reason, the file name or the database."""

    @property
    def where(self) -> str:
        """``README.md:42``, for messages."""
        return f"{self.document.relative_to(REPO_ROOT)}:{self.line}"


def blocks_of(document: Path) -> list[Block]:
    """The fenced blocks of ``document`` in order, with the marker before each (a block in a list
    item is indented: its indentation is removed)."""
    lines = document.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = len(opening.group(1))
        start = index
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            index += 1
        assert index < len(lines), f"{document.name}:{start + 1}: the block is never closed"
        previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(previous)
        found.append(
            Block(
                document=document,
                line=start + 1,
                language=opening.group(2),
                text="\n".join(line[indent:] for line in lines[start + 1 : index]) + "\n",
                marker=marker.group(1) if marker else "",
                value=marker.group(2) if marker else "",
            )
        )
        index += 1
    return found


ALL_BLOCKS = [block for document in DOCUMENTS for block in blocks_of(document)]
NOT_RUN = [block for block in ALL_BLOCKS if block.marker == "not run"]


def _doc_id(document: Path) -> str:
    return str(document.relative_to(REPO_ROOT))


# ---- the convention itself -------------------------------------------------------------------


def test_every_shell_block_is_run_or_marked() -> None:
    """No shell recipe hides in a fence the runner ignores; every marker means something."""
    wrong = [
        f"{block.where}: ```{block.language} (write ```sh to run it, or ```text for output)"
        for block in ALL_BLOCKS
        if block.language in REFUSED_LANGUAGES
    ]
    wrong += [
        f"{block.where}: <!-- {block.marker}: --> before a ```{block.language or 'plain'} block"
        for block in ALL_BLOCKS
        if block.marker and block.language not in RUN_LANGUAGES
    ]
    wrong += [f"{b.where}: 'not run' without a reason" for b in NOT_RUN if not b.value]
    wrong += [
        f"{b.where}: unknown database {b.value!r}"
        for b in ALL_BLOCKS
        if b.marker == "db" and b.value != "postgresql"
    ]
    assert not wrong, "\n".join(wrong)
    assert any(block.language in RUN_LANGUAGES for block in ALL_BLOCKS if not block.marker)


@pytest.mark.parametrize("block", NOT_RUN, ids=[block.where for block in NOT_RUN])
def test_not_run(block: Block) -> None:
    """Each block the documents mark as not runnable here, listed with its reason."""
    pytest.skip(f"{block.where} not run: {block.value}")


# ---- running a document ----------------------------------------------------------------------


def _environment(folder: Path, db_url: str) -> dict[str, str]:
    """A new user's environment: our venv first on PATH, an empty home, no dagtask settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DAGTASK_") and key not in ("PYTHONPATH", "XDG_CONFIG_HOME")
    }
    home = folder / ".home"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        DAGTASK_DB_URL=db_url,
        NO_COLOR="1",
        TERM="dumb",
        PYTHONUNBUFFERED="1",
    )
    return env


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """End the block's process group: what it left in the background goes with it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _kill_processes_under(folder: Path) -> list[int]:
    """Kill what still runs with ``folder`` on its command line (agents a block started)."""
    killed = []
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def _script(block: Block, folder: Path) -> list[str]:
    """The command that runs ``block``, its text written to a hidden file in ``folder``."""
    if block.language == "python":
        path = folder / f".doc-block-{block.line}.py"
        path.write_text(block.text, encoding="utf-8")
        return [sys.executable, str(path)]
    # Trace each command with its line in the document, so a failure points at it.
    offset = block.line - 3
    header = f"set -eo pipefail\nPS4='+ [line $((LINENO + {offset}))] '\nset -x\n"
    path = folder / f".doc-block-{block.line}.sh"
    path.write_text(header + block.text, encoding="utf-8")
    return ["bash", str(path)]


def _run_block(block: Block, folder: Path, env: dict[str, str]) -> None:
    """Run one block; fail naming the document, its line and the output."""
    # The output goes to a file, not a pipe: a background process the block started would hold
    # a pipe open after the block itself has ended.
    log_path = folder / f".doc-block-{block.line}.out"
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            _script(block, folder),
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill_group(proc)
            proc.wait()
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode < 0 or proc.returncode is None:
        pytest.fail(
            f"{block.where}: the ```{block.language} block ran longer than {BLOCK_TIMEOUT:.0f} s"
            f"\n--- its output ---\n{output}"
        )
    if proc.returncode != 0:
        pytest.fail(
            f"{block.where}: the ```{block.language} block exited {proc.returncode}"
            f"\n--- its output ---\n{output}"
        )


RUNNABLE_DOCUMENTS = [
    document
    for document in DOCUMENTS
    if any(b.language in RUN_LANGUAGES and b.marker != "not run" for b in blocks_of(document))
]


@pytest.mark.parametrize("document", RUNNABLE_DOCUMENTS, ids=_doc_id)
def test_document_runs_in_order(
    document: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The document's runnable blocks, in order, in a fresh folder against a fresh database."""
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copytree(
        REPO_ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    sqlite = _environment(folder, f"sqlite:///{folder}/dagtask.db")
    try:
        for block in blocks_of(document):
            if block.language not in RUN_LANGUAGES or block.marker == "not run":
                continue
            if block.marker == "file":
                (folder / block.value).write_text(block.text, encoding="utf-8")
                continue
            env = sqlite
            if block.marker == "db":
                env = {**sqlite, "DAGTASK_DB_URL": str(request.getfixturevalue("pg_url"))}
            _run_block(block, folder, env)
    finally:
        _kill_processes_under(folder)


# ---- /docs and /redoc without internet -------------------------------------------------------

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
EXTERNAL = re.compile(r"""\b(?:https?:)?//[a-z0-9.-]+""", re.IGNORECASE)


def _page_assets(client: Any, page: str) -> list[str]:
    """The asset URLs ``page`` refers to, after checking that it names no other host."""
    answer = client.get(page)
    assert answer.status_code == 200, answer.text
    assert "text/html" in answer.headers["content-type"]
    external = EXTERNAL.findall(answer.text)
    assert not external, f"{page} loads from elsewhere: {external}"
    assets = ASSET.findall(answer.text)
    assert assets, f"{page} names no script or style"
    return [str(url) for url in assets]


@pytest.mark.parametrize("prefix", ["", "/dagtask"], ids=["app", "mounted"])
def test_api_docs_pages_are_served_from_the_package(tmp_path: Path, prefix: str) -> None:
    """/docs and /redoc name only their own assets, which answer 200, also under a mount."""
    from fastapi import FastAPI

    from dagtask import Engine
    from dagtask.api import create_app
    from tests.api.support import serve_app

    with Engine(f"sqlite:///{tmp_path}/api.db", workers=0) as engine:
        app: Any = create_app(engine)
        if prefix:
            host = FastAPI()
            host.mount(prefix, app)
            app = host
        with serve_app(app, engine) as api:
            client = api.client(None)
            for page in ("/docs", "/redoc"):
                assets = _page_assets(client, f"{prefix}{page}")
                assert all(url.startswith(f"{prefix}/static/") for url in assets), assets
                for url in assets:
                    answer = client.get(url)
                    assert answer.status_code == 200, f"{page}: {url} answers {answer.status_code}"
                    assert len(answer.content) > 500, url
            schema = client.get(f"{prefix}/openapi.json")
            assert schema.status_code == 200


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` with every host but the loopback unresolvable (offline)."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=10000",
        "--window-size=1400,900",
        *options,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.usefixtures("chromium_installed")
@pytest.mark.parametrize(
    ("page", "shown"),
    [
        # Swagger UI lists each operation as a block with its method and path.
        ("/docs", ['class="opblock-summary-path"', "/compute/hosts/{hostId}/agent/stop"]),
        # ReDoc renders each operation's summary as a heading of the menu.
        ("/redoc", ["/api/v2/tasks/instances/{id}/rollback", "Stop OCP agent"]),
    ],
)
def test_api_docs_render_offline(tmp_path: Path, page: str, shown: list[str]) -> None:
    """A browser without internet renders the operations of the API on /docs and /redoc."""
    from dagtask import Engine
    from dagtask.api import create_app
    from tests.api.support import serve_app

    engine = Engine(f"sqlite:///{tmp_path}/api.db", workers=0)
    with engine, serve_app(create_app(engine), engine) as api:
        profile = tmp_path / "chromium"
        dom = chromium(f"{api.url}{page}", f"--user-data-dir={profile}", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for text in shown:
        assert text in dom.stdout, f"{page} rendered without {text!r}:\n{dom.stdout[:3000]}"


# ---- what the README says about handlers in __main__ -----------------------------------------

SCRIPT = """\
from dagtask import TemplateBuilder


def greet(ctx):
    return None


if __name__ == "__main__":
    t = TemplateBuilder("Greet")
    t.add("Greet", greet)
    print("stored as", t.build().subtasks[0].handler)
"""


def test_a_handler_in_the_script_being_run_is_refused_and_python_m_uses_its_module(
    tmp_path: Path,
) -> None:
    """``python greet.py`` cannot store ``__main__.greet`` (no other process could import it);
    ``python -m greet`` stores ``greet.greet``, which a worker in that folder imports."""
    (tmp_path / "greet.py").write_text(SCRIPT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    refused = run("greet.py")
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "dagtask.errors.HandlerImportError: handler 'greet' is defined in the "
        "script being run (module __main__)"
    ), refused.stderr
    assert "move it into a module" in last
    as_module = run("-m", "greet")
    assert as_module.returncode == 0, as_module.stderr
    assert as_module.stdout.strip() == "stored as greet.greet"
