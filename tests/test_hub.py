"""spamgpt.hub: a pinned revision's files are checked against their known hashes."""

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fileserver import serve

from spamgpt import hub
from spamgpt.download import DownloadError
from spamgpt.random_hub import REVISION, make_hub

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
