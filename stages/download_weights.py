"""download_weights: fetch config, tokenizer and safetensors weights of the chosen GPT-2."""

from spamgpt import stage  # first: its garbage collector setting covers the imports below

# isort: split
from spamgpt import contracts, hub, paths
from spamgpt.params import Params


def main(params: Params) -> None:
    m = params.model
    files = hub.download_model(m.hub_url, m.repo_id, m.revision, paths.pretrained_dir(m.repo_id))
    contracts.write_weights(m.repo_id, m.revision, files, m.hub_url)


if __name__ == "__main__":
    stage.run(main)
