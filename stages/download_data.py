"""download_data: fetch data.url (or copy it, a local file), keep the verified file or archive
member; with given splits (data.files), each split's file into one folder."""

from pathlib import Path

from spamgpt import paths, stage
from spamgpt.data.download import fetch, fetch_files
from spamgpt.params import Params


def main(params: Params) -> None:
    d = params.data
    if d.files is not None:
        sources = {name: (s.url, s.sha256) for name, s in d.files.sources().items()}
        fetch_files(sources, paths.RAW_DATA)
        return
    desc = d.member or Path(d.url).name
    fetch([d.url, *d.mirrors], paths.RAW_DATA, sha256=d.sha256, member=d.member, desc=desc)


if __name__ == "__main__":
    stage.run(main)
