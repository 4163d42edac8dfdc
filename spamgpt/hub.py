"""GPT-2 checkpoints from the Hugging Face hub: which files, their known hashes, the download."""

import logging
from pathlib import Path

from spamgpt.download import fetch

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors")

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


def download_model(hub_url: str, repo_id: str, revision: str, dest: Path) -> dict[str, dict]:
    """Fetch the model's files into `dest`, verified where a hash is known.

    Returns {file: {"sha256": ..., "verified": bool}} for metrics/weights.json.
    """
    known = KNOWN_HASHES.get((repo_id, revision), {})
    record = {}
    for name in MODEL_FILES:
        expected = known.get(name)
        if expected is None:
            log.warning(
                "no known sha256 for %s@%s/%s: accepting it unverified", repo_id, revision, name
            )
        sha = fetch(
            [file_url(hub_url, repo_id, revision, name)], dest / name, sha256=expected, desc=name
        )
        record[name] = {"sha256": sha, "verified": expected is not None}
    return record
