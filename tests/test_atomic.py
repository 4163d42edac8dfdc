"""spamgpt.atomic: a file, or a folder (replaced_dir), is replaced whole or not at all (the
failure cases of files are in tests/test_reliability_inputs.py)."""

import errno
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import pandas as pd
import pytest

from spamgpt import atomic


def test_a_reader_sees_the_old_content_until_the_block_ends(tmp_path: Path) -> None:
    dest = tmp_path / "metrics.json"
    dest.write_text("old")
    with atomic.atomic_open(dest) as f:
        f.write("new")
        f.flush()
        assert dest.read_text() == "old"
        assert Path(f.name).parent == tmp_path  # beside it: the rename stays on one disk
    assert dest.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_write_json_keeps_the_key_order_indented_with_a_final_newline(tmp_path: Path) -> None:
    atomic.write_json(tmp_path / "sub" / "a.json", {"z": 1, "a": [1, 2]})
    text = (tmp_path / "sub" / "a.json").read_text()
    assert text == '{\n  "z": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert list(json.loads(text)) == ["z", "a"]


def test_leftovers_are_those_of_this_file_only(tmp_path: Path) -> None:
    """A name with glob characters matches itself, and another file's leftovers stay."""
    dest = tmp_path / "a[1].json"
    mine = tmp_path / ".a[1].json.x1y2.tmp"
    others = [tmp_path / ".a1.json.x1y2.tmp", tmp_path / ".b.json.x1y2.tmp", tmp_path / "a1.json"]
    for path in [mine, *others]:
        path.write_text("")
    assert atomic.remove_leftovers(dest) == [mine]
    assert all(p.exists() for p in others) and not mine.exists()
    assert atomic.remove_leftovers(tmp_path / "missing" / "x.json") == []


def test_a_failed_block_leaves_no_file_where_there_was_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic.atomic_path(tmp_path / "w.bin") as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("stopped")
    assert list(tmp_path.iterdir()) == []


def files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    dest = tmp_path / "split"
    dest.mkdir()
    (dest / "train.csv").write_text("old")
    (dest / "stale.csv").write_text("from a run before")
    return dest


def test_the_new_folder_takes_the_old_ones_place_whole(dest: Path) -> None:
    with atomic.replaced_dir(dest) as folder:
        assert folder.parent == dest.parent and folder != dest
        atomic.write_text(folder / "train.csv", "new")
        assert files(dest) == {"train.csv": "old", "stale.csv": "from a run before"}
    assert files(dest) == {"train.csv": "new"}  # no file of the old folder is left
    assert sorted(p.name for p in dest.parent.iterdir()) == ["split"]


def test_a_failed_block_leaves_the_folder_as_it_was(dest: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic.replaced_dir(dest) as folder:
        atomic.write_text(folder / "train.csv", "half")
        raise KeyboardInterrupt
    assert files(dest) == {"train.csv": "old", "stale.csv": "from a run before"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["split"]


def test_a_new_folder_where_there_was_none(tmp_path: Path) -> None:
    with atomic.replaced_dir(tmp_path / "data" / "tokens") as folder:
        atomic.write_text(folder / "train.safetensors", "ids")
    assert files(tmp_path / "data" / "tokens") == {"train.safetensors": "ids"}


def test_the_folders_of_a_killed_run_are_removed_on_the_next(dest: Path) -> None:
    for name in (".split.k1ll3d.tmp", ".split.k1ll3d.old"):
        (dest.parent / name).mkdir()
        (dest.parent / name / "train.csv").write_text("left by kill -9")
    (dest.parent / ".splitting").mkdir()  # not one of its folders
    with atomic.replaced_dir(dest) as folder:
        atomic.write_text(folder / "train.csv", "new")
    assert sorted(p.name for p in dest.parent.iterdir()) == [".splitting", "split"]


@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_as_the_folder_is_made_leaves_none(dest: Path, monkeypatch, threads: int) -> None:
    """SIGINT arriving once mkdtemp has made the folder, before replaced_dir holds its name;
    also with a second thread, as a stage has torch's (a signal the main thread masked would
    go there, and Python would raise it in the main thread wherever that had got to)."""
    made = tempfile.mkdtemp

    def then_ctrl_c(*args, **kwargs) -> str:
        folder = made(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", then_ctrl_c)
    waiting = threading.Event()
    for _ in range(threads - 1):
        threading.Thread(target=waiting.wait, daemon=True).start()
    # Python's own Ctrl-C handler, which a job started in the background (`cmd &`) lacks: it
    # inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), atomic.replaced_dir(dest):
            pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, previous)
        waiting.set()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()  # nothing left masked
    assert sorted(p.name for p in dest.parent.iterdir()) == ["split"]


def test_write_csv_writes_the_frame_without_its_index_and_no_temporary_file(tmp_path):
    dest = tmp_path / "plot.csv"
    frame = pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.25]}, index=[7, 9])
    atomic.write_csv(dest, frame)
    assert dest.read_text() == "step,loss\n1,0.5\n2,0.25\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.csv"]


def test_an_os_error_names_the_destination_and_keeps_its_errno(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    dest = tmp_path / "file" / "a.json"  # its folder cannot be made: a file has that name
    with pytest.raises(FileExistsError) as raised:
        atomic.write_json(dest, {})
    assert raised.value.errno == errno.EEXIST and raised.value.strerror == "File exists"
    assert raised.value.filename == str(dest)


def test_an_error_with_no_errno_keeps_its_message_and_names_the_destination(tmp_path) -> None:
    dest = tmp_path / "a.bin"
    with pytest.raises(OSError) as raised, atomic.atomic_path(dest):
        raise OSError("device gone")  # no errno, no strerror, no file name
    assert (raised.value.errno, raised.value.strerror) == (None, "device gone")
    assert raised.value.filename == str(dest)


def test_text_and_csv_are_utf_8_whatever_the_locale(tmp_path: Path, ascii_locale) -> None:
    atomic.write_text(tmp_path / "a.txt", "caf\u00e9")
    atomic.write_csv(tmp_path / "a.csv", pd.DataFrame({"text": ["caf\u00e9"]}))
    assert (tmp_path / "a.txt").read_bytes() == "caf\u00e9".encode()
    assert (tmp_path / "a.csv").read_bytes() == "text\ncaf\u00e9\n".encode()
