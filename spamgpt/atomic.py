"""Write files so that readers see the old content or the new, never half of either.

Everything goes to a temporary name in the destination's folder (same file system, so the
final os.replace is atomic), is flushed and fsynced, and only then renamed into place. A
folder is built the same way, beside the one it replaces (replaced_dir). DVC leaves the
pipeline's outputs to these functions (`persist: true`): a stage that fails keeps the last
good ones.
"""

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from spamgpt import interrupts

if TYPE_CHECKING:  # a frame to write, for the hint only: atomic imports no pandas
    import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}."


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` if the block succeeds.

    An OSError (disk full, read-only, permission) is raised naming `dest`, not the temporary
    name the user never sees; a failed block leaves `dest` as it was and no temporary file.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise _naming(e, dest) from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes the file 0600, and so does safetensors' save_file: give the result
        # open()'s usual mode, readable by the group and others as umask allows.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        # A write error carries no file name, and others name the temporary file.
        if e.filename is None or Path(e.filename) == tmp:
            raise _naming(e, dest) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replaced_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside `dest` to write the new content of `dest` into (with
    atomic_path, or anything else); once the block succeeds it takes the place of `dest`, whose
    old files are then deleted. A failed block leaves `dest` as it was and no temporary folder;
    the folders of a killed one (kill -9 skips the clean-up) go on the next call.
    """
    dest = Path(dest)
    # Ctrl-C or SIGTERM while the folder is made (it exists before mkdtemp returns) would
    # leave it behind: they wait until the block below, whose clean-up removes it.
    held = interrupts.Pending().hold(record=False)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        for stale in dest.parent.glob(f"{glob.escape(_temp_prefix(dest))}*.*"):
            if stale.is_dir() and stale.suffix in (".tmp", ".old"):
                shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), suffix=".tmp", dir=dest.parent))
    except BaseException as e:
        held.release()
        if isinstance(e, OSError):
            raise _naming(e, dest) from e
        raise
    old = tmp.with_suffix(".old")
    try:
        held.release()  # a signal that came raises here
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700, as open()'s 0600 above
        moved = False
        try:
            if dest.exists():
                os.rename(dest, old)
                moved = True
            os.rename(tmp, dest)
        except BaseException:  # a signal between the renames too: the old folder back
            if moved and not dest.exists():
                os.rename(old, dest)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _naming(error: OSError, dest: Path) -> OSError:
    """The same error (errno, so the same OSError subclass) about `dest`."""
    return OSError(error.errno, error.strerror or str(error), str(dest))


def remove_leftovers(dest: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes to `dest` that a killed process left behind
    (kill -9 skips atomic_path's clean-up). Only for a file no other process is writing now."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    stale = sorted(dest.parent.glob(f"{glob.escape(_temp_prefix(dest))}*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """open() for writing, but the file appears at `dest` only once the block has succeeded."""
    with atomic_path(dest) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_open(dest, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(dest: str | os.PathLike, frame: "pd.DataFrame") -> None:
    """`frame` as CSV without its index, whole or not at all (plot data DVC reads), in UTF-8
    whatever the locale (the messages' texts)."""
    with atomic_open(dest, "w", encoding="utf-8", newline="") as f:
        frame.to_csv(f, index=False)
