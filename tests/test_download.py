"""spamgpt.data.download.fetch against a local server that misbehaves on demand."""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import free_port, run_stage, sms_collection
from fileserver import Faults, serve
from terminal import drawn

from spamgpt import __version__, paths
from spamgpt.data import download
from spamgpt.data.download import DownloadError, fetch, sha256_file

SIZE = 200_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(autouse=True)
def no_proxy_no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Reach 127.0.0.1 directly whatever the environment says, and record backoffs instead
    of sleeping through them."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    sleeps: list[float] = []
    monkeypatch.setattr(download, "time", SimpleNamespace(sleep=sleeps.append))
    return sleeps


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def site(tmp_path: Path, data: bytes) -> Path:
    root = tmp_path / "site"
    (root / "good").mkdir(parents=True)
    (root / "good" / "data.bin").write_bytes(data)
    (root / "bad").mkdir()
    (root / "bad" / "data.bin").write_bytes(data[:-1] + b"!")
    return root


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_plain_download(site: Path, out: Path, data: bytes) -> None:
    faults = Faults()
    with serve(site, faults=faults) as url:
        digest = fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert digest == sha(data) == sha256_file(out / "data.bin")
    assert (out / "data.bin").read_bytes() == data
    assert leftovers(out) == ["data.bin"]
    [request] = faults.requests
    assert request.range is None
    assert request.headers["User-Agent"] == f"spamgpt/{__version__}"


def test_resume_after_cut_connection(site: Path, out: Path, data: bytes, no_proxy_no_sleep) -> None:
    faults = Faults(cut_after=50_000, cuts=1)
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert (out / "data.bin").read_bytes() == data
    assert [r.range for r in faults.requests] == [None, "bytes=50000-"]
    assert no_proxy_no_sleep == [0.5]
    assert leftovers(out) == ["data.bin"]


def test_interrupted_run_resumes_on_next_run(site: Path, out: Path, data: bytes) -> None:
    faults = Faults(cut_after=70_000, cuts=1)
    with serve(site, faults=faults) as url:
        with pytest.raises(DownloadError, match="connection closed after 70000 of 200000"):
            fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data), retries=0)
        assert leftovers(out) == [".data.bin.part"]  # never under dest's own name
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data), retries=0)
    assert (out / "data.bin").read_bytes() == data
    assert faults.requests[-1].range == "bytes=70000-"
    assert leftovers(out) == ["data.bin"]


def test_server_ignoring_range_still_gives_right_file(site: Path, out: Path, data: bytes) -> None:
    faults = Faults(cut_after=50_000, cuts=1, ignore_range=True)
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert faults.requests[-1].range == "bytes=50000-"
    assert (out / "data.bin").read_bytes() == data


def test_complete_partial_file_answered_416(site: Path, out: Path, data: bytes) -> None:
    (out / ".data.bin.part").write_bytes(data)
    faults = Faults()
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert [r.range for r in faults.requests] == [f"bytes={SIZE}-"]
    assert leftovers(out) == ["data.bin"]


def test_stale_partial_file_is_replaced(site: Path, out: Path, data: bytes) -> None:
    (out / ".data.bin.part").write_bytes(b"x" * 1000)  # left by another mirror's file
    faults = Faults()
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert [r.range for r in faults.requests] == ["bytes=1000-", None]
    assert (out / "data.bin").read_bytes() == data


def test_5xx_then_success(site: Path, out: Path, data: bytes, no_proxy_no_sleep) -> None:
    faults = Faults(statuses=[500, 503])
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert len(faults.requests) == 3
    assert no_proxy_no_sleep == [0.5, 1.0]
    assert (out / "data.bin").read_bytes() == data


def test_5xx_until_retries_run_out(site: Path, out: Path, data: bytes) -> None:
    faults = Faults(statuses=[502] * 10)
    with (
        serve(site, faults=faults) as url,
        pytest.raises(DownloadError, match=r"HTTP 502 .*gave up after 3 attempts"),
    ):
        fetch([f"{url}/good/data.bin"], out / "data.bin", retries=2)
    assert len(faults.requests) == 3
    assert leftovers(out) == []


def test_timeout_is_retried(site: Path, out: Path, data: bytes, no_proxy_no_sleep) -> None:
    """The first two requests never get an answer (they stall until the server stops): only
    the client's timeout ends them, and the third request gets the file."""
    faults = Faults(stall=3600, stalls=2)
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data), timeout=0.2)
    assert len(faults.requests) == 3
    assert no_proxy_no_sleep == [0.5, 1.0]  # backed off after each timeout
    assert (out / "data.bin").read_bytes() == data


def test_checksum_mismatch_then_mirror(site: Path, out: Path, data: bytes) -> None:
    faults = Faults()
    with serve(site, faults=faults) as url:
        urls = [f"{url}/bad/data.bin", f"{url}/good/data.bin"]
        assert fetch(urls, out / "data.bin", sha256=sha(data)) == sha(data)
    assert [r.path for r in faults.requests] == ["/bad/data.bin", "/good/data.bin"]
    assert (out / "data.bin").read_bytes() == data
    assert leftovers(out) == ["data.bin"]


def test_all_urls_fail_names_each(site: Path, out: Path, data: bytes) -> None:
    with serve(site) as url:
        urls = [f"{url}/bad/data.bin", f"{url}/missing/data.bin", f"{url}/bad/data.bin?again"]
        with pytest.raises(DownloadError) as info:
            fetch(urls, out / "data.bin", sha256=sha(data))
    message = str(info.value)
    got = sha((site / "bad" / "data.bin").read_bytes())
    mismatch = f"sha256 mismatch: got {got}, expected {sha(data)}"
    assert message == (
        f"could not download data.bin: {urls[0]}: {mismatch}; "
        f"{urls[1]}: HTTP 404 Not Found; {urls[2]}: {mismatch}"
    )
    assert leftovers(out) == []


def test_4xx_is_not_retried_and_mirror_used(site: Path, out: Path, data: bytes) -> None:
    faults = Faults(paths={"/private/data.bin"}, statuses=[403] * 5)
    with serve(site, faults=faults) as url:
        urls = [f"{url}/missing/data.bin", f"{url}/private/data.bin", f"{url}/good/data.bin"]
        fetch(urls, out / "data.bin", sha256=sha(data))
    paths = [r.path for r in faults.requests]
    assert paths == ["/missing/data.bin", "/private/data.bin", "/good/data.bin"]
    assert (out / "data.bin").read_bytes() == data


def test_offline_reuse(site: Path, out: Path, data: bytes) -> None:
    faults = Faults()
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
        faults.requests.clear()
        assert fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data)) == sha(data)
        assert faults.requests == []
        # Without a hash, an existing file could be an earlier URL's: fetched again.
        assert fetch([f"{url}/good/data.bin"], out / "data.bin") == sha(data)
        assert [r.path for r in faults.requests] == ["/good/data.bin"]
    # The server is gone now: still no network needed.
    assert fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data)) == sha(data)


def test_existing_wrong_dest_is_replaced(site: Path, out: Path, data: bytes) -> None:
    (out / "data.bin").write_bytes(b"old")
    with serve(site) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert (out / "data.bin").read_bytes() == data


def test_zip_member_extracted(site: Path, out: Path) -> None:
    text = b"ham\tsee you at 5\nspam\tWIN a prize now\n" * 1000
    (site / "sms.zip").write_bytes(zip_bytes({"readme": b"hello", "SMSSpamCollection": text}))
    with serve(site) as url:
        digest = fetch(
            [f"{url}/sms.zip"], out / "sms.tsv", sha256=sha(text), member="SMSSpamCollection"
        )
    assert digest == sha(text)
    assert (out / "sms.tsv").read_bytes() == text
    assert leftovers(out) == ["sms.tsv"]


def test_zip_member_missing(site: Path, out: Path) -> None:
    (site / "sms.zip").write_bytes(zip_bytes({"readme": b"hello"}))
    with serve(site) as url, pytest.raises(DownloadError, match="no member 'SMSSpamCollection'"):
        fetch([f"{url}/sms.zip"], out / "sms.tsv", member="SMSSpamCollection")
    assert leftovers(out) == []


def test_html_page_instead_of_zip(site: Path, out: Path) -> None:
    (site / "sms.zip").write_bytes(zip_bytes({"SMSSpamCollection": b"ham\thi\n"}))
    faults = Faults(html=True)
    with serve(site, faults=faults) as url, pytest.raises(DownloadError, match="HTML page"):
        fetch([f"{url}/sms.zip"], out / "sms.tsv", member="SMSSpamCollection")
    assert len(faults.requests) == 1
    assert leftovers(out) == []


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda z: z[: len(z) // 2], "not a zip or tar archive"),
        (lambda z: z[:100] + bytes(b ^ 0xFF for b in z[100:600]) + z[600:], "corrupt"),
    ],
    ids=["truncated", "corrupt-member"],
)
def test_broken_zip(site: Path, out: Path, mangle, reason: str) -> None:
    archive = zip_bytes({"SMSSpamCollection": os.urandom(5000)})
    (site / "sms.zip").write_bytes(mangle(archive))
    with serve(site) as url, pytest.raises(DownloadError, match=reason):
        fetch([f"{url}/sms.zip"], out / "sms.tsv", member="SMSSpamCollection")
    assert leftovers(out) == []


@pytest.mark.parametrize("bad", ["file:///etc/passwd", "ftp://example.org/x"])
def test_non_http_url_refused(site: Path, out: Path, bad: str) -> None:
    allowed = "only http\\(s\\) URLs and local paths are allowed"
    with pytest.raises(DownloadError, match=f"{bad}: {allowed}"):
        fetch(["http://127.0.0.1:9/x", bad], out / "data.bin")
    assert leftovers(out) == []


def test_local_file_is_copied_and_verified(tmp_path: Path, out: Path, data: bytes) -> None:
    source = tmp_path / "mine.csv"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert fetch([str(source)], out / "copy", sha256=digest) == digest
    assert (out / "copy").read_bytes() == data and source.exists()
    source.write_bytes(data + b"changed")  # a local source is read again, never reused
    assert fetch([str(source)], out / "copy") != digest
    with pytest.raises(DownloadError, match=r"mine\.csv: sha256 mismatch"):
        fetch([str(source)], out / "other", sha256=digest)
    with pytest.raises(DownloadError, match=r"missing\.csv: no such file"):
        fetch([str(tmp_path / "missing.csv")], out / "other")
    assert leftovers(out) == ["copy"]


def test_relative_local_path_is_read_from_the_working_directory(
    tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data" / "local").mkdir(parents=True)
    (tmp_path / "data" / "local" / "mine.jsonl").write_text('{"text": "hi", "label": 1}\n')
    monkeypatch.chdir(tmp_path)
    fetch(["data/local/mine.jsonl"], out / "copy")
    assert (out / "copy").read_text() == '{"text": "hi", "label": 1}\n'


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "zip"])
def test_member_of_a_local_archive(tmp_path: Path, out: Path, data: bytes, mode: str) -> None:
    archive = tmp_path / "archive"
    if mode == "zip":
        archive.write_bytes(zip_bytes({"folder/mine.tsv": data, "readme": b"x"}))
    else:
        with tarfile.open(archive, mode) as tf:
            info = tarfile.TarInfo("folder/mine.tsv")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(data).hexdigest()
    assert fetch([str(archive)], out / "m", member="folder/mine.tsv", sha256=digest) == digest
    assert (out / "m").read_bytes() == data
    with pytest.raises(DownloadError, match="archive has no member 'other'"):
        fetch([str(archive)], out / "n", member="other")


def test_fileserver_as_a_process(site: Path, data: bytes) -> None:
    script = Path(__file__).with_name("fileserver.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(site)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/good/data.bin", timeout=5) as r:
            assert r.read() == data
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


@pytest.mark.parametrize("primary_works", [False, True])
def test_download_data_stage_falls_back_to_data_mirrors(
    tmp_path: Path, primary_works: bool
) -> None:
    """The stage script with params.yaml's data.url and data.mirrors: the mirror is asked only
    when the primary URL fails (here a 404), and gives the data."""
    member = sms_collection(n_ham=20, n_spam=5)
    site = tmp_path / "site"
    (site / "primary").mkdir(parents=True)
    (site / "mirror").mkdir()
    archive = zip_bytes({"SMSSpamCollection": member, "readme": b"a mirror\n"})
    (site / "mirror" / "sms.zip").write_bytes(archive)
    if primary_works:
        (site / "primary" / "sms.zip").write_bytes(archive)
    work = tmp_path / "work"
    work.mkdir()
    faults = Faults()
    with serve(site, faults=faults) as url:
        data = {
            "url": f"{url}/primary/sms.zip",
            "mirrors": [f"{url}/mirror/sms.zip"],
            "member": "SMSSpamCollection",
            "sha256": sha(member),
        }
        params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
        (work / "params.yaml").write_text(yaml.safe_dump(params | {"data": params["data"] | data}))
        stage = run_stage("download_data", work)
        _, err = stage.communicate(timeout=120)
    assert stage.returncode == 0, err[-3000:]
    assert (work / paths.RAW_DATA).read_bytes() == member
    asked = [r.path for r in faults.requests]
    expected = ["/primary/sms.zip"] if primary_works else ["/primary/sms.zip", "/mirror/sms.zip"]
    assert asked == expected


def test_a_folder_at_dest_goes_only_once_the_file_is_verified(tmp_path: Path, out: Path) -> None:
    """data/raw/dataset was given splits' folder (data.files), now data.url is one file: a
    failed fetch leaves the folder (DVC does not delete it first: `persist`)."""
    dest, source = out / "dataset", tmp_path / "messages.tsv"
    dest.mkdir()
    (dest / "train").write_bytes(b"ham\tkept\n")
    source.write_bytes(b"ham\tnew\n")
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch([str(source)], dest, sha256=sha(b"other"))
    assert (dest / "train").read_bytes() == b"ham\tkept\n"
    assert fetch([str(source)], dest) == sha(b"ham\tnew\n")
    assert dest.read_bytes() == b"ham\tnew\n" and leftovers(out) == ["dataset"]


# --- pinned by mutation testing (tools/mutate.py download -k "not stage and not as_a_process")


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("bytes 100-199/1000", (100, 1000)),
        ("  bytes 0-0/1 ", (0, 1)),
        ("bytes 100-199/*", (100, None)),  # total unknown
        ("bytes */1000", (None, 1000)),  # a 416's: no range, the size
        ("bytes 100-199", (None, None)),
        ("items 1-2/3", (None, None)),
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_content_range_gives_first_byte_and_total(
    header: str | None, parsed: tuple[int | None, int | None]
) -> None:
    assert download._content_range(header) == parsed


def test_network_failures_are_one_line() -> None:
    import urllib.error

    assert download._describe(urllib.error.URLError(TimeoutError("x"))) == "timed out"
    assert download._describe(TimeoutError()) == "timed out"
    refused = ConnectionRefusedError(111, "Connection\n  refused")
    assert download._describe(urllib.error.URLError(refused)) == (
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert download._describe(urllib.error.URLError("no  host\nhere")) == "no host here"
    assert download._describe(OSError("disk gone")) == "OSError: disk gone"


@pytest.mark.parametrize(
    ("source", "member", "name"),
    [
        ("https://example.org/a/b/sms%20spam.zip?x=1", None, "sms spam.zip"),
        ("https://example.org/", None, "https://example.org/"),  # no file name: the URL
        ("https://example.org/data.zip", "SMSSpamCollection", "data.zip/SMSSpamCollection"),
        ("data/local/train.csv", None, "data/local/train.csv"),  # a path: as given
        ("data/my%20file.csv", None, "data/my%20file.csv"),
    ],
)
def test_source_name_is_how_messages_name_a_file(
    source: str, member: str | None, name: str
) -> None:
    assert download.source_name(source, member) == name


@pytest.mark.parametrize(
    ("source", "url"),
    [
        ("https://x.org/f", True),
        ("s3://bucket/key", True),
        ("git+ssh://host/repo", True),
        ("C:/data/file.csv", False),
        ("data/file.csv", False),
        ("1http://x", False),
        ("file:relative", False),
    ],
)
def test_a_url_has_a_scheme_and_two_slashes(source: str, url: bool) -> None:
    assert download.is_url(source) is url


def test_origin_is_scheme_and_host_in_lower_case() -> None:
    assert download._origin("HTTPS://Hub.Example.org:8443/a?b") == ("https", "hub.example.org:8443")


def test_sha256_of_a_file_larger_than_a_read(tmp_path: Path) -> None:
    content = os.urandom((1 << 20) + 5)
    path = tmp_path / "big"
    path.write_bytes(content)
    assert sha256_file(path) == sha(content)


def test_fetch_files_puts_every_verified_file_in_place_at_once(tmp_path: Path, out: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"one")
    (tmp_path / "b.csv").write_bytes(b"two")
    dest = out / "files"
    dest.write_text("a file from before")  # replaced by the folder
    sources = {
        "train": (str(tmp_path / "a.csv"), sha(b"one")),
        "test": (str(tmp_path / "b.csv"), None),
    }
    assert download.fetch_files(sources, dest) == {"train": sha(b"one"), "test": sha(b"two")}
    assert (dest / "train").read_bytes() == b"one" and (dest / "test").read_bytes() == b"two"
    assert leftovers(out) == ["files"]
    (dest / "old").write_text("from an earlier run")  # a folder from before: replaced whole
    download.fetch_files({"train": (str(tmp_path / "a.csv"), None)}, dest)
    assert leftovers(dest) == ["train"] and leftovers(out) == ["files"]
    bad = {"train": (str(tmp_path / "a.csv"), None), "val": (str(tmp_path / "b.csv"), sha(b"x"))}
    with pytest.raises(DownloadError) as e:
        download.fetch_files(bad, dest, setting="model.files")
    assert str(e.value) == (
        f"model.files.val.url: could not download val (b.csv): {tmp_path / 'b.csv'}: sha256 "
        f"mismatch: got {sha(b'two')}, expected {sha(b'x')}"
    )
    assert leftovers(dest) == ["train"] and leftovers(out) == ["files"]  # nothing lost


def test_a_token_goes_to_the_first_host_only(site: Path, out: Path, data: bytes) -> None:
    behind = Faults()
    with serve(site, faults=behind) as other:
        front = Faults(redirect=other.replace("127.0.0.1", "localhost"))
        with serve(site, faults=front) as url:
            headers = {"Authorization": "Bearer t0ken"}
            fetch([url + "/good/data.bin"], out / "data.bin", sha256=sha(data), headers=headers)
    assert [r.headers.get("Authorization") for r in front.requests] == ["Bearer t0ken"]
    assert [r.headers.get("Authorization") for r in behind.requests] == [None]
    assert (out / "data.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"  \n<!DOCTYPE html><html>login</html>", "the server sent an HTML page"),
        (b"<HTML>", "the server sent an HTML page"),
        (b"PK\x03\x04 cut short", "not a zip or tar archive (truncated or corrupt download)"),
    ],
)
def test_what_is_not_an_archive_says_what_it_looks_like(
    tmp_path: Path, out: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "data.zip"
    path.write_bytes(content)
    with pytest.raises(DownloadError) as e:
        fetch([str(path)], out / "x", member="x")
    assert str(e.value).startswith(f"could not download x: {path}: not a zip or tar archive")
    assert reason in str(e.value)


def test_a_tar_member_that_is_a_folder_or_missing_is_named(tmp_path: Path, out: Path) -> None:
    path = tmp_path / "data.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i in range(12):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError, match=r"tar member 'folder' is not a file$"):
        fetch([str(path)], out / "x", member="folder")
    with pytest.raises(DownloadError) as e:
        fetch([str(path)], out / "x", member="nope")
    shown = ", ".join(["folder", *(f"f{i}" for i in range(9))])
    assert str(e.value).endswith(f"tar archive has no member 'nope' (it has {shown})")
    fetch([str(path)], out / "x", member="f3")
    assert (out / "x").read_bytes() == b"x"


def test_the_reason_a_url_failed_and_how_often_it_was_asked(site: Path, out: Path) -> None:
    with serve(site, faults=Faults(statuses=[503] * 3)) as url:
        source = url + "/good/data.bin"
        with pytest.raises(DownloadError) as e:
            fetch([source], out / "data.bin", retries=0)
        assert (
            str(e.value) == f"could not download data.bin: {source}: HTTP 503 Service Unavailable"
        )
        with pytest.raises(DownloadError) as e:
            fetch([source], out / "data.bin", retries=1, desc="the data")
        assert str(e.value) == (
            f"could not download the data: {source}: HTTP 503 Service Unavailable (gave up after "
            "2 attempts)"
        )
    closed = f"http://127.0.0.1:{free_port()}/data.bin"
    with pytest.raises(DownloadError) as e:
        fetch([closed], out / "data.bin", retries=0)
    assert str(e.value) == (
        f"could not download data.bin: {closed}: ConnectionRefusedError: [Errno 111] Connection "
        "refused"
    )


def test_an_empty_zip_has_nothing(tmp_path: Path, out: Path) -> None:
    path = tmp_path / "empty.zip"
    path.write_bytes(zip_bytes({}))
    with pytest.raises(DownloadError) as e:
        fetch([str(path)], out / "x", member="x")
    assert str(e.value).endswith("zip archive has no member 'x' (it has nothing)")


def test_fetch_takes_a_lone_url_makes_folders_and_needs_one(tmp_path: Path, out: Path) -> None:
    source = tmp_path / "a.csv"
    source.write_bytes(b"one")
    assert fetch(str(source), out / "x" / "y" / "a.csv") == sha(b"one")  # a str, not a list
    assert (out / "x" / "y" / "a.csv").read_bytes() == b"one"
    with pytest.raises(DownloadError) as e:
        fetch([], out / "a.csv")
    assert str(e.value) == "no URL given to download a.csv from"


def test_a_local_source_is_read_again_though_dest_verifies(tmp_path: Path, out: Path) -> None:
    (out / "a.csv").write_bytes(b"one")
    missing = tmp_path / "gone.csv"
    with pytest.raises(DownloadError, match=r"gone\.csv: no such file$"):
        fetch([str(missing)], out / "a.csv", sha256=sha(b"one"))


def test_a_relative_path_missing_here_and_in_the_repository_is_no_such_file(
    tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DownloadError) as e:
        fetch(["no/such.csv"], out / "a.csv")
    assert str(e.value) == "could not download a.csv: no/such.csv: no such file"
    (tmp_path / "here.csv").write_bytes(b"local")  # in the working directory only
    assert download.local_source("here.csv") == Path("here.csv")


def test_https_is_allowed_and_the_default_retries_are_three(site: Path, out: Path) -> None:
    closed = f"HTTPS://127.0.0.1:{free_port()}/data.bin"
    with pytest.raises(DownloadError) as e:
        fetch([closed], out / "data.bin", retries=0)
    assert "refusing" not in str(e.value) and "ConnectionRefusedError" in str(e.value)
    gave_up = pytest.raises(DownloadError, match=r"\(gave up after 4 attempts\)$")
    with serve(site, faults=Faults(statuses=[503] * 4)) as url, gave_up:
        fetch([url + "/good/data.bin"], out / "data.bin")


def test_fetch_files_from_scratch_and_after_a_crash(tmp_path: Path, out: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"one")
    staging = out / ".files.files"  # what a crashed run left
    staging.mkdir()
    (staging / "junk").write_text("stale")
    download.fetch_files({"train": (str(tmp_path / "a.csv"), None)}, out / "files")
    assert leftovers(out / "files") == ["train"] and leftovers(out) == ["files"]
    with pytest.raises(DownloadError, match=r"^data\.files\.test\.url: could not download"):
        download.fetch_files({"test": (str(tmp_path / "none.csv"), None)}, out / "other")


def test_a_token_follows_a_redirect_on_the_same_host(site: Path, out: Path, data: bytes) -> None:
    (site / "good" / "moved").mkdir()
    (site / "good" / "moved" / "data.bin").write_bytes(data)
    faults = Faults(paths={"/moved/data.bin"})
    with serve(site, faults=faults) as url:
        faults.redirect = url + "/good"
        headers = {"Authorization": "Bearer t0ken"}
        fetch([url + "/moved/data.bin"], out / "data.bin", sha256=sha(data), headers=headers)
    assert [r.headers.get("Authorization") for r in faults.requests] == ["Bearer t0ken"] * 2


def test_urls_and_names_in_edge_cases() -> None:
    assert download.is_url("HTTPS://x.org/f") and download.is_url("S3://b/k")
    assert download.source_name("https://example.org") == "https://example.org"


def test_the_progress_bar_names_the_file_and_counts_binary_kilobytes(
    site: Path, out: Path, data: bytes
) -> None:
    """On a terminal: the bar's name, its size in KiB (200000 bytes: 195k), and where a
    resumed download starts (100000 bytes: 97.7k)."""
    (out / ".data.bin.part").write_bytes(data[:100_000])
    with serve(site) as url, drawn() as screen:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data), desc="the data")
    first, *_, last = screen.text.strip("\r\n").split("\r")
    assert first.startswith("the data:  50%|") and " 97.7k/195k [" in first
    assert last.startswith("the data: 100%|") and " 195k/195k [" in last and "B/s]" in last


def test_a_download_without_a_hash_starts_over_unless_it_is_of_a_member(
    site: Path, out: Path, data: bytes
) -> None:
    """A partial file left without a hash to check it against is another download's: fetched
    from scratch. An archive member's partial archive is resumed (the member is checked by
    being read out of the archive)."""
    (out / ".data.bin.part").write_bytes(b"x" * 1000)
    faults = Faults()
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin")
    assert (out / "data.bin").read_bytes() == data
    assert [r.range for r in faults.requests] == [None]
    archive = zip_bytes({"member.txt": data})
    (site / "good" / "data.zip").write_bytes(archive)
    (out / ".member.txt.part").write_bytes(archive[:5000])
    faults.requests.clear()
    with serve(site, faults=faults) as url:
        fetch([f"{url}/good/data.zip"], out / "member.txt", member="member.txt")
    assert (out / "member.txt").read_bytes() == data
    assert [r.range for r in faults.requests] == ["bytes=5000-"]


def test_a_partial_file_longer_than_the_file_is_dropped(
    site: Path, out: Path, data: bytes, no_proxy_no_sleep
) -> None:
    """A 416 whose size is not the partial file's: the partial file goes, and the attempt
    counts as a failed one (retried after a backoff; the reason, with none left)."""
    (out / ".data.bin.part").write_bytes(data + b"more")
    faults = Faults()
    with serve(site, faults=faults) as url:
        with pytest.raises(DownloadError) as e:
            fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data), retries=0)
        assert str(e.value).endswith(f"HTTP 416: partial file has {SIZE + 4} bytes, not {SIZE}")
        assert leftovers(out) == [] and no_proxy_no_sleep == []
        (out / ".data.bin.part").write_bytes(data + b"more")
        faults.requests.clear()
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert [r.range for r in faults.requests] == [f"bytes={SIZE + 4}-", None]
    assert no_proxy_no_sleep == [0.5] and (out / "data.bin").read_bytes() == data


def test_an_error_status_on_resuming_is_that_error(site: Path, out: Path, data: bytes) -> None:
    (out / ".data.bin.part").write_bytes(data[:1000])
    with serve(site, faults=Faults(statuses=[404])) as url, pytest.raises(DownloadError) as e:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert str(e.value).endswith("/good/data.bin: HTTP 404 Not Found")


def test_only_the_first_512_bytes_are_looked_at_for_an_html_page(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    path.write_bytes(b" " * 512 + b"<html>")
    assert download._not_an_archive(path).endswith("(truncated or corrupt download)")
    path.write_bytes(b" " * 511 + b"<html>")
    assert "HTML page" in download._not_an_archive(path)


def test_off_a_terminal_no_progress_bar_is_drawn(
    site: Path, out: Path, data: bytes, capsys
) -> None:
    with serve(site) as url:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data))
    assert capsys.readouterr().err == ""


def test_a_server_resuming_at_another_byte_is_not_trusted(
    site: Path, out: Path, data: bytes
) -> None:
    """The partial file goes (what follows would not fit it); with no attempt left, the
    reason."""
    (out / ".data.bin.part").write_bytes(data[:1000])
    with serve(site, faults=Faults(resume_from=10)) as url, pytest.raises(DownloadError) as e:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data), retries=0)
    assert str(e.value).endswith("/good/data.bin: server resumed at byte 10, not 1000")
    assert leftovers(out) == []


def test_an_unexpected_success_status_fails_the_url(site: Path, out: Path) -> None:
    with serve(site, faults=Faults(statuses=[203])) as url, pytest.raises(DownloadError) as e:
        fetch([f"{url}/good/data.bin"], out / "data.bin")
    assert str(e.value).endswith(
        "/good/data.bin: unexpected HTTP 203 Non-Authoritative Information"
    )


def test_a_body_without_content_length_is_read_to_its_end(
    site: Path, out: Path, data: bytes
) -> None:
    """No size to count against (nor to draw a bar of): the connection's end is the file's,
    and the hash the judge."""
    with serve(site, faults=Faults(no_length=True)) as url, drawn() as screen:
        fetch([f"{url}/good/data.bin"], out / "data.bin", sha256=sha(data), desc="d")
    assert (out / "data.bin").read_bytes() == data
    last = screen.text.strip("\r\n").split("\r")[-1]
    assert last.startswith("d: 195kB [") and "/195k" not in screen.text


def test_a_body_that_stops_coming_times_out(site: Path, out: Path, data: bytes) -> None:
    with serve(site, faults=Faults(hang_after=1000)) as url, pytest.raises(DownloadError) as e:
        fetch([f"{url}/good/data.bin"], out / "data.bin", timeout=0.5, retries=0)
    assert str(e.value).endswith("/good/data.bin: timed out")
