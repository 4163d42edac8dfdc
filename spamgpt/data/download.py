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
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from spamgpt import __version__
from spamgpt.atomic import atomic_path
from spamgpt.errors import SpamGPTError
from spamgpt.paths import repo_root

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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks so that large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    urls: Sequence[str],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    member: str | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30.0,
    desc: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Download `dest` from the first of `urls` (primary, then mirrors) that gives a verified
    file, and return the file's SHA-256. A URL may also be a local file path (absolute, or
    relative to the working directory or else the repository root), which is copied.
    `headers` go with every request (an Authorization header only to the URL's own host:
    not along a redirect to another), and into no message.

    With `member`, the download is a zip or tar archive and `dest` receives that member of
    it; `sha256` is then the member's, since mirrors repackage archives. An existing `dest`
    that matches `sha256` is reused without touching the network; without `sha256` nothing
    tells it from an earlier URL's file (DVC leaves outputs in place: `persist`), so it is
    fetched again.
    """
    if isinstance(urls, str):  # a lone URL would otherwise be taken letter by letter
        urls = [urls]
    dest = Path(dest)
    if not urls:
        raise DownloadError(f"no URL given to download {dest.name} from")
    for url in urls:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if is_url(url) and scheme not in ("http", "https"):
            raise DownloadError(
                f"refusing to download {url}: only http(s) URLs and local paths are allowed"
            )
    expected = sha256.lower() if sha256 else None
    local = not all(is_url(url) for url in urls)  # a local source is read again, never reused
    if expected is not None and not local and dest.is_file() and sha256_file(dest) == expected:
        return expected
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f".{dest.name}.part"
    failures = []
    for url in urls:
        try:
            if not is_url(url):
                return _install_local(url, dest, expected=expected, member=member)
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
                headers=headers or {},
            )
        except _UrlFailed as e:
            failures.append(f"{url}: {e}")
    raise DownloadError(f"could not download {desc or dest.name}: " + "; ".join(failures))


def fetch_files(
    sources: dict[str, tuple[str, str | None]],
    dest: str | os.PathLike,
    setting: str = "data.files",
) -> dict[str, str]:
    """Fetch each {name: (URL or local path, sha256 or None)} to dest/<name>, and return
    their hashes. `dest` (a folder; a file there before is replaced) appears only once every
    one is verified; a failure names the source's setting (`setting`.<name>.url)."""
    dest = Path(dest)
    staging = dest.parent / f".{dest.name}.files"
    shutil.rmtree(staging, ignore_errors=True)
    hashes = {}
    try:
        for name, (url, sha256) in sources.items():
            desc = f"{name} ({Path(urllib.parse.urlsplit(url).path).name})"
            try:
                hashes[name] = fetch([url], staging / name, sha256=sha256, desc=desc)
            except DownloadError as e:
                raise DownloadError(f"{setting}.{name}.url: {e}") from None
        if dest.is_dir():
            shutil.rmtree(dest)
        else:
            dest.unlink(missing_ok=True)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return hashes


def is_url(source: str) -> bool:
    """A URL (scheme://...), as opposed to a local path."""
    return re.match(r"[A-Za-z][\w+.-]*://", source) is not None


def source_name(source: str, member: str | None = None) -> str:
    """How messages name a file given as `source` (a URL or a local path) and, for an archive,
    its `member`: the path as given, or the URL's file name; `archive.zip/member`."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1])
    name = (name or source) if is_url(source) else source
    return f"{name}/{member}" if member else name


def local_source(source: str) -> Path:
    """A local data path: absolute, or relative to the working directory (the repository or
    DVC's copy of it), else to the repository root."""
    path = Path(source).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return repo_root() / path


def _install_local(source: str, dest: Path, *, expected: str | None, member: str | None) -> str:
    path = local_source(source)
    if not path.is_file():
        raise _UrlFailed("no such file")
    return _install(path, dest, expected=expected, member=member, move=False)


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
    headers: Mapping[str, str],
) -> str:
    if expected is None and member is None:
        # Nothing could tell a stale partial file (another mirror's, an older version's) from
        # a good one, so resume only what this call itself downloads.
        part.unlink(missing_ok=True)
    while True:
        resumed = part.exists()
        _download(
            url, part, retries=retries, backoff=backoff, timeout=timeout, desc=desc, headers=headers
        )
        try:
            return _install(part, dest, expected=expected, member=member)
        except _UrlFailed:
            part.unlink(missing_ok=True)
            if not resumed:
                raise
            # The partial file we resumed may have come from another URL or an older file:
            # download once more from scratch before blaming this URL.


def _download(
    url: str,
    part: Path,
    *,
    retries: int,
    backoff: float,
    timeout: float,
    desc: str,
    headers: Mapping[str, str],
) -> None:
    """Get the whole of `url` into `part`, retrying transient failures with backoff."""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _stream(url, part, timeout=timeout, desc=desc, headers=headers)
            return
        except _Transient as e:
            reason = str(e)
    tries = f" (gave up after {retries + 1} attempts)" if retries else ""
    raise _UrlFailed(reason + tries)


class _SameHostAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but drops the Authorization header (a hub token) on
    the way to another host, as `requests` does: a hub sends large files to a CDN."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


_OPENER = urllib.request.build_opener(_SameHostAuthRedirect)


def _stream(url: str, part: Path, *, timeout: float, desc: str, headers: Mapping[str, str]) -> None:
    """One attempt: append the rest of `url` to `part`, resuming from the bytes it holds."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = _OPENER.open(request, timeout=timeout)
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


def _install(
    source: Path, dest: Path, *, expected: str | None, member: str | None, move: bool = True
) -> str:
    """Verify `source` (or its archive member) and put it at `dest`, moved (a download) or
    copied (the user's own file); return its hash."""
    with atomic_path(dest) as tmp:
        if member is not None:
            _extract(source, member, tmp)
        elif move:
            os.replace(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        digest = sha256_file(tmp)
        if expected is not None and digest != expected:
            raise _UrlFailed(f"sha256 mismatch: got {digest}, expected {expected}")
        if dest.is_dir():  # given splits' folder from before (data.files): gone once verified
            shutil.rmtree(dest)
    if move:
        source.unlink(missing_ok=True)
    return digest


def _extract(archive: Path, member: str, out: Path) -> None:
    """`member` of a zip or tar (.tar.gz, .tar.bz2, .tar.xz) archive into `out`."""
    kind = "zip" if zipfile.is_zipfile(archive) else "tar" if tarfile.is_tarfile(archive) else None
    if kind is None:
        raise _UrlFailed(_not_an_archive(archive))
    try:
        with zipfile.ZipFile(archive) if kind == "zip" else tarfile.open(archive) as files:
            names = files.namelist() if kind == "zip" else files.getnames()
            if member not in names:
                shown = ", ".join(names[:10]) or "nothing"
                raise _UrlFailed(f"{kind} archive has no member {member!r} (it has {shown})")
            src = files.open(member) if kind == "zip" else files.extractfile(member)
            if src is None:
                raise _UrlFailed(f"tar member {member!r} is not a file")
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_SIZE)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError) as e:
        raise _UrlFailed(f"corrupt or unsupported {kind} archive: {e}") from e


def _not_an_archive(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith(b"<"):
        return "not a zip or tar archive: the server sent an HTML page (an error or login page?)"
    return "not a zip or tar archive (truncated or corrupt download)"


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
