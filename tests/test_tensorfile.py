"""spamgpt.tensorfile: plain safetensors files, written and read a few rows at a time."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spamgpt import tensorfile

ROWS = torch.arange(24, dtype=torch.float32).reshape(6, 4) / 7


def test_rows_written_in_pieces_are_a_safetensors_file_safetensors_reads(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    layout = {"lengths": (torch.int64, (3,)), "hidden": (torch.bfloat16, (6, 4))}
    tensorfile.create(path, layout)
    with tensorfile.TensorFile(path, writable=True) as f:
        f.write("hidden", 4, ROWS[4:])  # out of order, converted to the stored dtype
        f.write("hidden", 0, ROWS[:4])
        f.write("lengths", 0, torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match=r"hidden: rows 5\+\(2, 4\) outside"):
            f.write("hidden", 5, ROWS[:2])
    whole = load_file(path)
    assert torch.equal(whole["hidden"], ROWS.bfloat16())
    assert torch.equal(whole["lengths"], torch.tensor([1, 2, 3]))


def test_rows_read_as_a_slice_or_a_padded_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    save_file({"hidden": ROWS.bfloat16()}, path)
    with tensorfile.TensorFile(path) as f:
        rows = f.rows("hidden", torch.float32)
        assert len(rows) == 6 and rows.dtype == torch.float32
        assert torch.equal(rows[1:3], ROWS.bfloat16().float()[1:3])
        padded = rows.padded(torch.tensor([4, 0]), torch.tensor([2, 1]), 3, -1.0)
        expected = torch.full((2, 3, 4), -1.0)
        expected[0, :2], expected[1, :1] = ROWS.bfloat16().float()[4:6], ROWS.bfloat16().float()[:1]
        assert torch.equal(padded, expected)
        with pytest.raises(IndexError):
            rows[::2]


@pytest.mark.parametrize(
    ("cut", "message"),
    [(4, "too short"), (20, "a header of"), (-1, "data ends at byte")],
    ids=["no header", "cut in the header", "cut in the data"],
)
def test_a_truncated_file_is_a_format_error(tmp_path: Path, cut: int, message: str) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"x": ROWS}, path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(tensorfile.FormatError, match=message):
        tensorfile.TensorFile(path)
