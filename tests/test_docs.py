"""The shell blocks README.md and docs/*.md mark `<!-- runnable -->` (the line before a ```bash
fence) run as written, one after another in a copy of the tiny reproduced project (conftest's
`reproduced`), offline: what the docs write for a real machine (GPT-2's shapes, port 8000,
/tmp/hub, the path of a downloaded UCI zip) becomes this test's stand-in by SUBSTITUTIONS, each
of which must occur in some block. Blocks that need the real hub or a real server stay unmarked.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Mirror, Reproduced, free_port, run, subprocess_env

from spamgpt import tracking

MARKER = "<!-- runnable -->"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# (pattern in a block, its stand-in here): {tmp} {port} {data} are filled in per run.
SUBSTITUTIONS = [
    (r"--layers 4 --dim 256 --heads 4", "--layers 2 --dim 32 --heads 4 --n-ctx 64"),
    (r"/tmp/hub\b", "{tmp}/hub"),
    (r"\b8000\b", "{port}"),
    (r"/path/to/sms\+spam\+collection\.zip", "{data}"),
]


@dataclass
class Block:
    doc: str  # relative to the repository
    line: int  # of its fence, 1-based
    code: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def runnable_blocks(path: Path) -> list[Block]:
    """The ```bash blocks of a Markdown file whose fence follows a MARKER line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[i + 1] if i + 1 < len(lines) else ""
        assert fence == "```bash", f"{path.name}:{i + 1}: {MARKER} not followed by ```bash"
        end = lines.index("```", i + 2)
        blocks.append(Block(str(path.relative_to(REPO)), i + 2, "\n".join(lines[i + 2 : end])))
    return blocks


BLOCKS = [block for doc in DOCS for block in runnable_blocks(doc)]


def test_the_marked_blocks_and_substitutions_are_in_use() -> None:
    docs = {block.doc for block in BLOCKS}
    assert {"README.md", "docs/beyond-one-machine.md"} <= docs
    for pattern, _ in SUBSTITUTIONS:
        assert any(re.search(pattern, b.code) for b in BLOCKS), f"{pattern} in no block"


@pytest.fixture(scope="module")
def docs_project(
    reproduced: Reproduced, mirror: Mirror, empty_store: Path, tmp_path_factory
) -> dict[str, str]:
    """A copy of the reproduced project, an MLflow store, and the values SUBSTITUTIONS fill
    in: a scratch folder, a free port, a local copy of the data's zip."""
    tmp = tmp_path_factory.mktemp("docs")
    project = reproduced.copy(tmp / "project")
    shutil.copy(empty_store, project / tracking.DB_FILE)
    data = tmp / "sms+spam+collection.zip"
    shutil.copy(mirror.root / data.name, data)
    # one port for every block: the hub's URL, a parameter, stays the same from one to the next
    return {"project": str(project), "tmp": str(tmp), "data": str(data), "port": str(free_port())}


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_a_runnable_block_runs_as_written(block: Block, docs_project: dict[str, str]) -> None:
    # Each block starts from the committed params.yaml: a `dvc exp run -S` leaves its change
    # there, and a block leaving out a parameter would pass after one that set it.
    project = Path(docs_project["project"])
    run(["git", "checkout", "--", "params.yaml"], project)
    code = block.code
    for pattern, stand_in in SUBSTITUTIONS:
        code = re.sub(pattern, stand_in.format(**docs_project).replace("\\", r"\\"), code)
    # Its own session: a server the block starts with `&` is stopped with it. Its output to a
    # file: such a server holds the file open after the block's shell has exited.
    log = Path(docs_project["tmp"]) / f"{block.doc.replace('/', '_')}-{block.line}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", code],
            cwd=project,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing left running
            os.killpg(proc.pid, signal.SIGTERM)
    output = log.read_text()
    assert proc.returncode == 0, f"{block} exited {proc.returncode}:\n{code}\n{output[-4000:]}"
    assert "ERROR" not in output, f"{block}:\n{output[-4000:]}"
