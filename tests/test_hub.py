"""spamgpt.data.hub: a pinned revision's files are checked against their known hashes."""

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fileserver import Faults, serve
from terminal import drawn

from spamgpt.data import hub
from spamgpt.data.download import DownloadError
from spamgpt.random_hub import REVISION, hub_dir, make_hub

REPO_ID = "openai-community/gpt2"


@pytest.fixture(autouse=True)
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A tiny GPT-2 served as REPO_ID at the pinned revision (and at 'main'); (url, its files)."""
    root = tmp_path / "hub"
    files = make_hub(root, revision=REVISION)
    make_hub(root, revision="main")
    with serve(root) as url:
        yield url, files


def hashes(files: Path) -> dict[str, str]:
    return {n: hashlib.sha256((files / n).read_bytes()).hexdigest() for n in hub.MODEL_FILES}


@pytest.fixture
def pinned(site: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The known-hash table holding the tiny model's real hashes for the pinned revision."""
    known = hashes(site[1])
    monkeypatch.setattr(hub, "KNOWN_HASHES", {(REPO_ID, REVISION): known})
    return known


def test_pinned_revision_with_the_known_files_is_verified(site, pinned, tmp_path: Path) -> None:
    url, _ = site
    record = hub.download_model(url, REPO_ID, REVISION, tmp_path / "out")
    assert record == {n: {"sha256": pinned[n], "verified": True} for n in hub.MODEL_FILES}
    assert hashes(tmp_path / "out") == pinned


@pytest.mark.parametrize("name", hub.MODEL_FILES)
def test_pinned_revision_refuses_a_tampered_file(site, pinned, tmp_path: Path, name: str) -> None:
    url, files = site
    data = bytearray((files / name).read_bytes())
    data[len(data) // 2] ^= 1  # one bit: same size, same format
    (files / name).write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(DownloadError) as info:
        hub.download_model(url, REPO_ID, REVISION, out)
    message = str(info.value)
    assert f"/resolve/{REVISION}/{name}" in message and "sha256 mismatch" in message
    assert pinned[name] in message
    assert not (out / name).exists()


def test_the_real_table_refuses_other_files_at_the_real_revision(site, tmp_path: Path) -> None:
    """The tiny model served as openai-community/gpt2 at the pinned revision is not it."""
    url, _ = site
    with pytest.raises(DownloadError, match=r"config\.json.*sha256 mismatch"):
        hub.download_model(url, REPO_ID, REVISION, tmp_path / "out")


def test_unknown_revision_is_accepted_unverified_with_a_warning(
    site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, files = site
    record = hub.download_model(url, REPO_ID, "main", tmp_path / "out")
    assert record == {n: {"sha256": h, "verified": False} for n, h in hashes(files).items()}
    assert "no known sha256 for openai-community/gpt2@main/model.safetensors" in caplog.text


# The Hugging Face cache and environment variables.

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Hugging Face variable from outside; an empty hub cache of this test's own."""
    for name in ("HF_HOME", hub.ENDPOINT_ENV, hub.OFFLINE_ENV, hub.TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def fill_cache(cache: Path, files: Path, names: tuple[str, ...], ref: str | None = None) -> Path:
    """huggingface_hub's layout: snapshots/<commit>/<name> are relative links into blobs/,
    refs/<ref> names the commit. Returns the snapshot folder."""
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in names:
        data = (files / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 at COMMIT and at 'main', made once: tests only read it."""
    root = tmp_path_factory.mktemp("hub")
    make_hub(root, revision=COMMIT)
    make_hub(root, revision="main")
    return root


@pytest.fixture
def recorded(hub_root: Path) -> Iterator[tuple[str, Path, Faults]]:
    """hub_root behind a server recording requests: (url, the files at COMMIT, the log)."""
    faults = Faults()
    with serve(hub_root, faults=faults) as url:
        yield url, hub_dir(hub_root, REPO_ID, COMMIT), faults


def asked(faults: Faults) -> list[str]:
    return sorted(r.path.rsplit("/", 1)[1] for r in faults.requests)


@pytest.mark.parametrize("revision", [COMMIT, "main"])
def test_cached_files_are_verified_and_linked_without_the_network(
    recorded, hf_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revision: str
) -> None:
    url, files, faults = recorded
    known = hashes(files)
    monkeypatch.setattr(hub, "KNOWN_HASHES", {(REPO_ID, revision): known})
    snapshot = fill_cache(hf_env, files, hub.MODEL_FILES, ref="main")
    out = tmp_path / "out"
    record = hub.download_model(url, REPO_ID, revision, out)
    assert record == {n: {"sha256": known[n], "verified": True} for n in hub.MODEL_FILES}
    assert faults.requests == []
    assert hashes(out) == known
    # A hard link to the blob (one file system here): no second copy of the weights.
    weights = out / "model.safetensors"
    assert weights.stat().st_ino == (snapshot / "model.safetensors").resolve().stat().st_ino
    assert not weights.is_symlink()


def test_only_what_the_cache_lacks_or_has_wrong_is_downloaded(
    recorded, hf_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    url, files, faults = recorded
    known = hashes(files)
    monkeypatch.setattr(hub, "KNOWN_HASHES", {(REPO_ID, COMMIT): known})
    snapshot = fill_cache(hf_env, files, ("config.json", "vocab.json", "merges.txt"))
    blob = (snapshot / "vocab.json").resolve()
    blob.write_bytes(blob.read_bytes().replace(b"{", b"{ ", 1))  # still JSON, other bytes
    out = tmp_path / "out"
    record = hub.download_model(url, REPO_ID, COMMIT, out)
    assert all(r["verified"] for r in record.values()) and hashes(out) == known
    assert asked(faults) == ["model.safetensors", "vocab.json"]
    assert (
        f"{snapshot / 'vocab.json'} in the Hugging Face cache has sha256 "
        f"{hashlib.sha256(blob.read_bytes()).hexdigest()}, expected {known['vocab.json']}: "
        "not using it"
    ) in messages(caplog)
    assert blob.read_bytes() != (out / "vocab.json").read_bytes()  # the cache left as it was


def test_unknown_hashes_from_the_cache_are_accepted_and_recorded(
    recorded, hf_env: Path, tmp_path: Path
) -> None:
    url, files, faults = recorded
    fill_cache(hf_env, files, hub.MODEL_FILES, ref="main")
    record = hub.download_model(url, REPO_ID, "main", tmp_path / "out")
    assert record == {n: {"sha256": h, "verified": False} for n, h in hashes(files).items()}
    assert faults.requests == []


def test_offline_takes_the_cache_and_names_what_it_lacks(
    recorded, hf_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, files, faults = recorded
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    fill_cache(hf_env, files, ("config.json", "merges.txt"))
    with pytest.raises(DownloadError) as info:
        hub.download_model(url, REPO_ID, COMMIT, tmp_path / "out")
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and str(hf_env) in message
    assert "no vocab.json, model.safetensors in" in message and "\n" not in message
    assert faults.requests == []
    fill_cache(hf_env, files, ("vocab.json", "model.safetensors"))
    hub.download_model(url, REPO_ID, COMMIT, tmp_path / "out")
    assert faults.requests == [] and hashes(tmp_path / "out") == hashes(files)


def test_hf_endpoint_replaces_the_default_hub_only(
    recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, faults = recorded
    monkeypatch.setenv(hub.ENDPOINT_ENV, url + "/")
    hub.download_model(hub.DEFAULT_HUB_URL, REPO_ID, "main", tmp_path / "out")
    assert asked(faults) == sorted(hub.MODEL_FILES)
    assert hub.effective_hub_url("http://127.0.0.1:1") == "http://127.0.0.1:1"


def test_hf_token_reaches_the_hub_but_no_other_host_nor_any_message(
    recorded, hub_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, capsys
) -> None:
    url, files, faults = recorded
    token = "hf_secretSECRET123"
    monkeypatch.setenv(hub.TOKEN_ENV, token)
    hub.download_model(url, REPO_ID, "main", tmp_path / "out")
    assert {r.headers.get("Authorization") for r in faults.requests} == {f"Bearer {token}"}
    # A hub that sends the weights to another host (a CDN): the token stays behind.
    front = Faults(paths={f"/{REPO_ID}/resolve/main/model.safetensors"}, redirect=url)
    with serve(hub_root, faults=front) as front_url:
        faults.requests.clear()
        (tmp_path / "out" / "model.safetensors").unlink()
        hub.download_model(front_url, REPO_ID, "main", tmp_path / "out")
    assert front.requests[-1].headers.get("Authorization") == f"Bearer {token}"
    assert [r.headers.get("Authorization") for r in faults.requests] == [None]
    assert hashes(tmp_path / "out") == hashes(files)
    output = capsys.readouterr()
    assert token not in caplog.text + output.out + output.err


def test_the_cache_is_found_where_huggingface_hub_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hub.cache_dir() == tmp_path / "hf-cache"  # HF_HUB_CACHE first
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"


def test_an_unverified_file_is_kept_only_when_recorded_from_the_same_source(
    tmp_path: Path,
) -> None:
    """A revision without known hashes: the files already in dest are another revision's
    (the tiny model at 'main', served wider at 'wide'); asked for 'wide', they are replaced,
    and a revision the hub lacks fails instead of keeping them. Recorded as from 'wide' on this
    hub, with their hashes, they are kept, with the hub gone."""
    root, out = tmp_path / "hub", tmp_path / "out"
    make_hub(root, revision="main")
    wide = make_hub(root, dim=64, revision="wide")
    with serve(root) as url:
        hub.download_model(url, REPO_ID, "main", out)
        old = hashes(out)
        record = hub.download_model(url, REPO_ID, "main", out)
        assert hashes(out) == old and record["config.json"]["sha256"] == old["config.json"]
        with pytest.raises(DownloadError, match="404"):
            hub.download_model(url, REPO_ID, "absent", out)
        record = hub.download_model(url, REPO_ID, "wide", out)
        assert hashes(out) == hashes(wide) != old
    weights = {"repo_id": REPO_ID, "revision": "wide", "hub_url": url, "files": record}
    assert hub.download_model(url, REPO_ID, "wide", out, weights) == record  # nothing served
    with pytest.raises(DownloadError):
        hub.download_model(url, REPO_ID, "wide", out, {**weights, "revision": "main"})


# --- pinned by mutation testing (tools/mutate.py hub) ---


@pytest.mark.parametrize(
    ("hub_url", "url"),
    [
        ("https://huggingface.co", "https://huggingface.co/org/gpt2/resolve/abc/config.json"),
        ("http://mirror:8080/hf//", "http://mirror:8080/hf/org/gpt2/resolve/abc/config.json"),
    ],
)
def test_file_url_is_the_hubs_resolve_url(hub_url: str, url: str) -> None:
    assert hub.file_url(hub_url, "org/gpt2", "abc", "config.json") == url


@pytest.mark.parametrize(
    ("endpoint", "hub_url", "effective"),
    [
        (" http://mirror:1/ ", "https://huggingface.co", "http://mirror:1"),
        ("http://mirror:1", "https://huggingface.co/", "http://mirror:1"),  # the default still
        ("http://mirror:1", "http://other:2/", "http://other:2/"),  # set by the user: kept
        ("  ", "https://huggingface.co", "https://huggingface.co"),
        (None, "https://huggingface.co/", "https://huggingface.co/"),
    ],
)
def test_hf_endpoint_stands_for_the_default_hub_only(
    monkeypatch: pytest.MonkeyPatch, endpoint: str | None, hub_url: str, effective: str
) -> None:
    monkeypatch.delenv(hub.ENDPOINT_ENV, raising=False)
    if endpoint is not None:
        monkeypatch.setenv(hub.ENDPOINT_ENV, endpoint)
    assert hub.effective_hub_url(hub_url) == effective


@pytest.mark.parametrize(
    ("value", "offline"),
    [("1", True), (" on ", True), ("yes", True), ("True", True), ("0", False), ("", False),
     ("off", False), (None, False)],
)  # fmt: skip
def test_hf_hub_offline_as_huggingface_hub_reads_it(
    monkeypatch: pytest.MonkeyPatch, value: str | None, offline: bool
) -> None:
    monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
    if value is not None:
        monkeypatch.setenv(hub.OFFLINE_ENV, value)
    assert hub.offline() is offline


def test_hf_token_is_a_bearer_header_without_its_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hub.TOKEN_ENV, "  hf_abc \n")
    assert hub.auth_headers() == {"Authorization": "Bearer hf_abc"}
    monkeypatch.setenv(hub.TOKEN_ENV, " ")
    assert hub.auth_headers() == {}
    monkeypatch.delenv(hub.TOKEN_ENV)
    assert hub.auth_headers() == {}


def test_only_slashes_are_stripped_from_hub_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.file_url("http://m/HX/", "o/r", "v", "f") == "http://m/HX/o/r/resolve/v/f"
    monkeypatch.setenv(hub.ENDPOINT_ENV, "http://mirror/X/")
    assert hub.effective_hub_url(hub.DEFAULT_HUB_URL) == "http://mirror/X"
    assert hub.effective_hub_url(hub.DEFAULT_HUB_URL + "X") == hub.DEFAULT_HUB_URL + "X"


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_each_unverified_file_is_one_warning_naming_it(
    site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = site
    hub.download_model(url, REPO_ID, "main", tmp_path / "out")
    assert [m for m in messages(caplog) if m.startswith("no known")] == [
        f"no known sha256 for {REPO_ID}@main/{name}: accepting it unverified"
        for name in hub.MODEL_FILES
    ]


def test_a_file_the_record_lacks_is_fetched_again(recorded, tmp_path: Path) -> None:
    """metrics/weights.json from this very source, without an entry for one file (written
    before that file was a model file): the others are kept, that one is downloaded."""
    url, _, faults = recorded
    out = tmp_path / "out"
    record = hub.download_model(url, REPO_ID, "main", out)
    faults.requests.clear()
    files_recorded = {n: r for n, r in record.items() if n != "merges.txt"}
    weights = {"repo_id": REPO_ID, "revision": "main", "hub_url": url, "files": files_recorded}
    assert hub.download_model(url, REPO_ID, "main", out, weights) == record
    assert asked(faults) == ["merges.txt"]


def test_offline_names_the_repository_revision_cache_and_folder(
    hf_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(hub.OFFLINE_ENV, "yes")
    out = tmp_path / "out"
    with pytest.raises(DownloadError) as info:
        hub.download_model("http://127.0.0.1:1", REPO_ID, "v2", out)
    assert str(info.value) == (
        f"HF_HUB_OFFLINE is set and {REPO_ID}@v2 has no config.json, vocab.json, merges.txt, "
        f"model.safetensors in the Hugging Face cache {hf_env} (nor a verified copy in {out}): "
        f"put them there (huggingface-cli download {REPO_ID} --revision v2), or unset "
        "HF_HUB_OFFLINE"
    )


def test_a_files_progress_bar_is_named_by_the_hubs_name_for_it(recorded, tmp_path: Path) -> None:
    url, files, _ = recorded
    with drawn() as screen:
        sha = hub.fetch_file(url, REPO_ID, "main", "vocab.json", tmp_path / "v.tmp", None)
    assert sha == hashes(files)["vocab.json"]
    assert screen.text.startswith("\rvocab.json:   0%|")


def test_a_known_hash_replaces_a_wrong_file_already_there(site, pinned, tmp_path: Path) -> None:
    url, _ = site
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    record = hub.download_model(url, REPO_ID, REVISION, out)
    assert record["config.json"] == {"sha256": pinned["config.json"], "verified": True}
    assert hashes(out) == pinned


def test_a_cached_file_goes_into_new_folders_and_is_said_where_from(
    hub_root: Path, hf_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = hub_dir(hub_root, REPO_ID, COMMIT)
    snapshot = fill_cache(hf_env, files, ("config.json",), ref="main")
    dest = tmp_path / "new" / "folders" / "config.json"
    caplog.set_level(logging.INFO, logger=hub.__name__)
    sha = hub.fetch_file("http://127.0.0.1:1", REPO_ID, "main", "config.json", dest, None)
    assert sha == hashes(files)["config.json"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert messages(caplog) == [
        f"{dest}: taken from the Hugging Face cache ({snapshot / 'config.json'})"
    ]


def test_a_cache_on_another_file_system_is_copied(
    hub_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard link cannot cross file systems: the blob is copied instead (/dev/shm, where it is
    a file system of its own)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no /dev/shm on a file system other than the temporary folder's")
    files = hub_dir(hub_root, REPO_ID, COMMIT)
    with tempfile.TemporaryDirectory(dir=shm) as cache:
        monkeypatch.setenv("HF_HUB_CACHE", cache)
        fill_cache(Path(cache), files, ("vocab.json",))
        out = tmp_path / "out"
        sha = hub.fetch_file("http://127.0.0.1:1", REPO_ID, COMMIT, "vocab.json", out / "v", None)
    assert (out / "v").read_bytes() == (files / "vocab.json").read_bytes()
    assert sha == hashes(files)["vocab.json"]
    assert (out / "v").stat().st_nlink == 1 and leftovers(out) == ["v"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())
