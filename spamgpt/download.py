"""Download a file over HTTP(S): mirrors, retries with backoff, resume, checksum, zip members.

Data and model servers fail in every way a server can (cut connections, 5xx, HTML error pages
served with 200, mirrors that repackage archives), so a download lands at its destination only
once verified; until then it lives under a hidden partial name that the next attempt, or the
next run, resumes from.
"""

import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from spamgpt import __version__
from spamgpt.atomic import atomic_path
from spamgpt.errors import SpamGPTError

USER_AGENT = f"spamgpt/{__version__}"
CHUNK_SIZE = 1 << 16
# 4xx answers that mean "not now" rather than "never": worth asking the same URL again.
_RETRY_STATUSES = frozenset({408, 429})
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(SpamGPTError):
    """No URL gave a verified file; the message names every URL tried and why it failed."""


class _Transient(Exception):
    """This attempt failed, but asking the same URL again may work."""


class _UrlFailed(Exception):
    """This URL will not give the file: move on to the next one."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so that large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    urls: Sequence[str],
    dest: Path,
    *,
    sha256: str | None = None,
    member: str | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30.0,
    desc: str | None = None,
) -> str:
    """Download `dest` from the first of `urls` (primary, then mirrors) that gives a verified
    file, and return the file's SHA-256.

    With `member`, the download is a zip archive and `dest` receives that member of it;
    `sha256` is then the member's, since mirrors repackage archives. An existing `dest` that
    verifies is reused without touching the network.
    """
    if isinstance(urls, str):  # a lone URL would otherwise be taken letter by letter
        urls = [urls]
    dest = Path(dest)
    if not urls:
        raise DownloadError(f"no URL given to download {dest.name} from")
    for url in urls:
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            raise DownloadError(f"refusing to download {url}: only http(s) URLs are allowed")
    expected = sha256.lower() if sha256 else None
    if dest.exists():
        digest = sha256_file(dest)
        if expected is None or digest == expected:
            return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f".{dest.name}.part"
    failures = []
    for url in urls:
        try:
            return _fetch_from(
                url,
                dest,
                part,
                expected=expected,
                member=member,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                desc=desc or dest.name,
            )
        except _UrlFailed as e:
            failures.append(f"{url}: {e}")
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(failures))


def _fetch_from(
    url: str,
    dest: Path,
    part: Path,
    *,
    expected: str | None,
    member: str | None,
    retries: int,
    backoff: float,
    timeout: float,
    desc: str,
) -> str:
    if expected is None and member is None:
        # Nothing could tell a stale partial file (another mirror's, an older version's) from
        # a good one, so resume only what this call itself downloads.
        part.unlink(missing_ok=True)
    while True:
        resumed = part.exists()
        _download(url, part, retries=retries, backoff=backoff, timeout=timeout, desc=desc)
        try:
            return _install(part, dest, expected=expected, member=member)
        except _UrlFailed:
            part.unlink(missing_ok=True)
            if not resumed:
                raise
            # The partial file we resumed may have come from another URL or an older file:
            # download once more from scratch before blaming this URL.


def _download(
    url: str, part: Path, *, retries: int, backoff: float, timeout: float, desc: str
) -> None:
    """Get the whole of `url` into `part`, retrying transient failures with backoff."""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _stream(url, part, timeout=timeout, desc=desc)
            return
        except _Transient as e:
            reason = str(e)
    tries = f" (gave up after {retries + 1} attempts)" if retries else ""
    raise _UrlFailed(reason + tries)


def _stream(url: str, part: Path, *, timeout: float, desc: str) -> None:
    """One attempt: append the rest of `url` to `part`, resuming from the bytes it holds."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            _, total = _content_range(e.headers.get("Content-Range"))
            if total is None or total == have:
                return  # nothing left to fetch; verification has the last word
            part.unlink()
            raise _Transient(f"HTTP 416: partial file has {have} bytes, not {total}") from e
        reason = f"HTTP {e.code} {e.reason}"
        if e.code >= 500 or e.code in _RETRY_STATUSES:
            raise _Transient(reason) from e
        raise _UrlFailed(reason) from e
    except (OSError, http.client.HTTPException) as e:
        raise _Transient(_describe(e)) from e

    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Transient(f"server resumed at byte {start}, not {have}")
        elif response.status == 200:
            have, total = 0, None  # the server ignored Range: start over
        else:
            raise _UrlFailed(f"unexpected HTTP {response.status} {response.reason}")
        length = response.headers.get("Content-Length", "")
        if total is None and length.isdigit():
            total = have + int(length)
        size = have
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=None,
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as e:
                    raise _Transient(_describe(e)) from e
                if not chunk:
                    break
                f.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    # http.client reports a body cut short as a plain end of data, so count the bytes.
    if total is not None and size < total:
        raise _Transient(f"connection closed after {size} of {total} bytes")


def _install(part: Path, dest: Path, *, expected: str | None, member: str | None) -> str:
    """Verify the download (or its zip member), move it onto `dest` and return its hash."""
    if member is not None and not zipfile.is_zipfile(part):
        raise _UrlFailed(_not_a_zip(part))
    with atomic_path(dest) as tmp:
        if member is None:
            os.replace(part, tmp)
        else:
            _extract(part, member, tmp)
        digest = sha256_file(tmp)
        if expected is not None and digest != expected:
            raise _UrlFailed(f"sha256 mismatch: got {digest}, expected {expected}")
    part.unlink(missing_ok=True)
    return digest


def _extract(archive: Path, member: str, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                names = ", ".join(zf.namelist()[:10]) or "nothing"
                raise _UrlFailed(f"zip archive has no member {member!r} (it has {names})") from None
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_SIZE)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise _UrlFailed(f"corrupt or unsupported zip archive: {e}") from e


def _not_a_zip(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith(b"<"):
        return "not a zip archive: the server sent an HTML page (an error or login page?)"
    return "not a zip archive (truncated or corrupt download)"


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total.isdigit() else None)


def _describe(error: BaseException) -> str:
    """A one-line reason for a network failure, unwrapping urllib's URLError."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return "timed out"
    text = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else reason
    return " ".join(str(text).split())
