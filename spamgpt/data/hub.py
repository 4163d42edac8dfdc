"""GPT-2 checkpoints from the Hugging Face hub: which files, their known hashes, the download.

Before going to the network, each file is looked for in models/pretrained (a previous run)
and then in the Hugging Face hub cache that `huggingface_hub` and `transformers` fill
(HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), and taken from there when
it verifies as a download would. The environment variables of the Hugging Face tools apply:
HF_ENDPOINT (the hub, when model.hub_url is left at DEFAULT_HUB_URL), HF_HUB_OFFLINE=1 (no
network: the cache or an error naming what it lacks) and HF_TOKEN (a bearer token for
private or gated repositories: sent to the hub only, never logged or recorded).
"""

import logging
import os
import shutil
from pathlib import Path

from spamgpt.atomic import atomic_path
from spamgpt.data.download import DownloadError, fetch, sha256_file

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors")
DEFAULT_HUB_URL = "https://huggingface.co"
ENDPOINT_ENV, OFFLINE_ENV, TOKEN_ENV = "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN"
_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub reads as a set boolean variable

# (repo_id, revision) -> {file: sha256}, as published by the hub (LFS oid for weights).
# A file missing here is accepted with a warning and its hash recorded in metrics/weights.json.
KNOWN_HASHES: dict[tuple[str, str], dict[str, str]] = {
    ("openai-community/gpt2", "607a30d783dfa663caf39e06633721c8d4cfcd7e"): {
        "config.json": "0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4",
        "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        "model.safetensors": "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707",
    },
}


def file_url(hub_url: str, repo_id: str, revision: str, name: str) -> str:
    return f"{hub_url.rstrip('/')}/{repo_id}/resolve/{revision}/{name}"


def effective_hub_url(hub_url: str) -> str:
    """model.hub_url, or $HF_ENDPOINT where model.hub_url is left at the default."""
    endpoint = os.environ.get(ENDPOINT_ENV, "").strip()
    if endpoint and hub_url.rstrip("/") == DEFAULT_HUB_URL:
        return endpoint.rstrip("/")
    return hub_url


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().upper() in _TRUE


def auth_headers() -> dict[str, str]:
    """The bearer token of $HF_TOKEN, as the hub expects it; none without it."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def cache_dir() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def cached_file(repo_id: str, revision: str, name: str) -> Path | None:
    """models--<owner>--<name>/snapshots/<commit>/<name> in the hub cache, if there: a branch
    or tag name is first turned into its commit by refs/<revision>, as huggingface_hub does."""
    repo = cache_dir() / f"models--{repo_id.replace('/', '--')}"
    commit = revision
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    path = repo / "snapshots" / commit / name
    return path if path.is_file() else None


def download_model(
    hub_url: str,
    repo_id: str,
    revision: str,
    dest: str | os.PathLike,
    recorded: dict | None = None,
) -> dict[str, dict]:
    """Put the model's files into `dest`, each as fetch_file gets it. `recorded`: the last
    metrics/weights.json, if any: a file without a known hash already in `dest` is kept only
    where it says that file came from this hub, repository and revision, with this hash (else a
    new model.revision or model.hub_url would keep the last model's files).

    Returns {file: {"sha256": ..., "verified": bool}} for metrics/weights.json.
    """
    dest = Path(dest)
    known = KNOWN_HASHES.get((repo_id, revision), {})
    source = (repo_id, revision, effective_hub_url(hub_url))
    same = recorded is not None and tuple(recorded.get(k) for k in SOURCE_KEYS) == source
    record, missing = {}, []
    for name in MODEL_FILES:
        expected = known.get(name)
        if expected is None:
            log.warning(
                "no known sha256 for %s@%s/%s: accepting it unverified", repo_id, revision, name
            )
        kept = recorded["files"].get(name, {}).get("sha256") if same else None
        sha = fetch_file(hub_url, repo_id, revision, name, dest / name, expected, kept)
        if sha is None:
            missing.append(name)
            continue
        record[name] = {"sha256": sha, "verified": expected is not None}
    if missing:
        raise offline_error(repo_id, revision, missing, dest)
    return record


SOURCE_KEYS = ("repo_id", "revision", "hub_url")  # of metrics/weights.json: where files came from


def fetch_file(
    hub_url: str,
    repo_id: str,
    revision: str,
    name: str,
    dest: str | os.PathLike,
    expected: str | None,
    recorded: str | None = None,
) -> str | None:
    """One file of a hub repository at `dest`, verified where its sha256 is `expected`: a
    copy already there is kept if it has that hash (or, without one, the `recorded` hash of
    the copy last fetched from this source), else the Hugging Face cache's is taken, else it
    is downloaded from the hub (hub_url, or $HF_ENDPOINT for the default; $HF_TOKEN sent)
    unless $HF_HUB_OFFLINE is set. Its sha256; None only offline, when neither had it."""
    dest = Path(dest)
    sha = _existing(dest, expected or recorded) or _from_cache(
        repo_id, revision, name, dest, expected
    )
    if sha is None and not offline():
        url = file_url(effective_hub_url(hub_url), repo_id, revision, name)
        sha = fetch([url], dest, sha256=expected, desc=name, headers=auth_headers())
    return sha


def offline_error(
    repo_id: str, revision: str, missing: list[str], dest: str | os.PathLike
) -> DownloadError:
    """What to do when $HF_HUB_OFFLINE is set and the cache lacks `missing`."""
    return DownloadError(
        f"{OFFLINE_ENV} is set and {repo_id}@{revision} has no {', '.join(missing)} in the "
        f"Hugging Face cache {cache_dir()} (nor a verified copy in {dest}): put them there "
        f"(huggingface-cli download {repo_id} --revision {revision}), or unset {OFFLINE_ENV}"
    )


def _existing(path: Path, wanted: str | None) -> str | None:
    """The hash of `path` if it is there and has the `wanted` hash (None: nothing is)."""
    if wanted is None or not path.is_file():
        return None
    digest = sha256_file(path)
    return digest if digest == wanted else None


def _from_cache(
    repo_id: str, revision: str, name: str, dest: Path, expected: str | None
) -> str | None:
    """Link (or, across file systems, copy) the cached file to `dest` if it verifies; its
    hash, or None where the cache has no good copy."""
    cached = cached_file(repo_id, revision, name)
    if cached is None:
        return None
    digest = sha256_file(cached)
    if expected is not None and digest != expected:
        log.warning(
            "%s in the Hugging Face cache has sha256 %s, expected %s: not using it",
            cached, digest, expected,
        )  # fmt: skip
        return None
    blob = cached.resolve()  # the snapshot entry is usually a link into blobs/
    dest.parent.mkdir(parents=True, exist_ok=True)
    linked = dest.parent / f".{dest.name}.link"
    linked.unlink(missing_ok=True)
    try:
        os.link(blob, linked)
        os.replace(linked, dest)
    except OSError:
        linked.unlink(missing_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(blob, tmp)
    log.info("%s: taken from the Hugging Face cache (%s)", dest, cached)
    return digest
