"""download_data: fetch the SMS Spam Collection archive and keep its verified member file."""

from spamgpt import paths, stage
from spamgpt.download import fetch
from spamgpt.params import Params


def main(params: Params) -> None:
    d = params.data
    fetch([d.url, *d.mirrors], paths.RAW_DATA, sha256=d.sha256, member=d.member, desc=d.member)


if __name__ == "__main__":
    stage.run(main)
