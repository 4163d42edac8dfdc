"""download_weights: fetch config, tokenizer and safetensors weights of the chosen GPT-2."""

from spamgpt import atomic, hub, paths, stage
from spamgpt.params import Params


def main(params: Params) -> None:
    m = params.model
    files = hub.download_model(m.hub_url, m.repo_id, m.revision, paths.pretrained_dir(m.repo_id))
    atomic.write_json(
        paths.METRICS_DIR / "weights.json",
        {"repo_id": m.repo_id, "revision": m.revision, "files": files},
    )


if __name__ == "__main__":
    stage.run(main)
