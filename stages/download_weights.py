"""download_weights: fetch config, tokenizer and safetensors weights of the chosen GPT-2
(from the Hugging Face cache where it has them)."""

from spamgpt import contracts, paths, stage
from spamgpt.data import hub
from spamgpt.params import Params


def main(params: Params) -> None:
    m = params.model
    dest = paths.pretrained_dir(m.repo_id)
    files = hub.download_model(m.hub_url, m.repo_id, m.revision, dest, contracts.read_weights())
    # The hub the files came from ($HF_ENDPOINT for the default): a light MLflow model
    # fetches its base from there.
    contracts.write_weights(m.repo_id, m.revision, files, hub.effective_hub_url(m.hub_url))


if __name__ == "__main__":
    stage.run(main)
