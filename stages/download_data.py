"""download_data: fetch data.url (or copy it, a local file), keep the verified file or archive
member."""

from pathlib import Path

from spamgpt import paths, stage
from spamgpt.download import fetch
from spamgpt.params import Params


def main(params: Params) -> None:
    d = params.data
    desc = d.member or Path(d.url).name
    fetch([d.url, *d.mirrors], paths.RAW_DATA, sha256=d.sha256, member=d.member, desc=desc)


if __name__ == "__main__":
    stage.run(main)
