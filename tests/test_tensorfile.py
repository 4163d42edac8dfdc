"""spamgpt.data.tensorfile: plain safetensors files, written and read a few rows at a time."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spamgpt.data import tensorfile

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


# --- pinned by mutation testing (tools/mutate.py tensorfile) ---

import json  # noqa: E402
import struct  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def test_created_files_have_an_aligned_header_and_their_exact_size(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    tensorfile.create(path, {"a": (torch.int64, (3,)), "bb": (torch.float16, (2, 5))})
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = {
        "a": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]},
        "bb": {"dtype": "F16", "shape": [2, 5], "data_offsets": [24, 44]},
    }
    compact = json.dumps(header, separators=(",", ":")).encode()  # as safetensors writes it
    assert len(compact) % 8 != 0  # so the padding is seen
    assert data[8 : 8 + length] == compact + b" " * (-len(compact) % 8)
    assert len(data) == 8 + length + 44 and data[8 + length :] == bytes(44)  # zeros
    with tensorfile.TensorFile(path) as f:
        assert f.tensors["bb"] == tensorfile.TensorInfo(torch.float16, (2, 5), 8 + length + 24)
        assert f.tensors["bb"].row_bytes == 10 and f.tensors["bb"].nbytes == 20
        assert f.read("a").tolist() == [0, 0, 0] and f.read("a").dtype == torch.int64


def test_rows_read_as_stored_or_converted_and_empty_slices(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    save_file({"x": ROWS, "__pad": torch.zeros(1)}, path, metadata={"who": "test"})
    with tensorfile.TensorFile(path) as f:
        assert set(f.tensors) == {"x", "__pad"}  # __metadata__ is not a tensor
        rows = f.rows("x")
        assert rows.dtype == torch.float32 and rows.shape == (6, 4)
        assert torch.equal(rows[2:], ROWS[2:]) and torch.equal(f.read("x"), ROWS)
        assert rows[4:2].shape == (0, 4) and rows[:0].shape == (0, 4)
        with pytest.raises(IndexError, match=r"^FileRows reads contiguous rows only$"):
            rows[::3]
        with pytest.raises(ValueError):  # a start for every length
            rows.padded(torch.tensor([0, 2, 4]), torch.tensor([1, 1]), 2, 0.0)
        with pytest.raises(OSError):  # opened to read only, unless writable=True
            f.write("x", 0, ROWS[:1])
        assert f.rows("x", torch.float64)[:1].dtype == torch.float64


def test_writes_reach_the_file_where_they_belong(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    tensorfile.create(path, {"first": (torch.int32, (2,)), "x": (torch.float32, (6, 4))})
    with tensorfile.TensorFile(path, writable=True) as f:
        f.write("x", 2, ROWS[2:5])
        f.write("first", 1, torch.tensor([7]))
        with pytest.raises(ValueError, match=r"x: rows 0\+\(1, 3\) outside \(6, 4\)"):
            f.write("x", 0, torch.zeros(1, 3))
        f.write("x", 5, ROWS[5:])  # the last row fits exactly
    whole = load_file(path)
    assert whole["first"].tolist() == [0, 7]
    expected = torch.zeros(6, 4)
    expected[2:] = ROWS[2:]
    assert torch.equal(whole["x"], expected)


def header_file(path: Path, header: object, data: bytes = b"", length: int | None = None):
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ([1, 2], b"", "the header is not a JSON object"),
        (b"\xff\xfe", b"", "the header is not JSON"),
        ({"x": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "x: not a tensor"),
        ({"x": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "x: not a tensor entry"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "x: offsets"),
        ({"x": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, b"\0" * 4, "x: offsets"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 5, "data ends"),
    ],
)
def test_garbled_headers_are_format_errors(tmp_path: Path, header, data, message) -> None:
    path = header_file(tmp_path / "g.safetensors", header, data)
    with pytest.raises(tensorfile.FormatError, match="^" + message):
        tensorfile.TensorFile(path)


def test_format_error_messages_give_the_sizes(tmp_path: Path) -> None:
    path = tmp_path / "e.safetensors"
    path.write_bytes(b"\0" * 7)
    with pytest.raises(tensorfile.FormatError, match=r"^7 bytes: too short for a safetensors"):
        tensorfile.TensorFile(path)
    header_file(path, {}, length=3)  # 2 bytes of header ({}), the file 10 long
    with pytest.raises(tensorfile.FormatError, match=r"^a header of 3 bytes in a file of 10$"):
        tensorfile.TensorFile(path)
    assert tensorfile.TensorFile(header_file(path, {})).tensors == {}  # exactly the file's end
    path.write_bytes(b"\0" * 8)  # 8 bytes are a header's length: of an empty header
    with pytest.raises(tensorfile.FormatError, match=r"^the header is not JSON"):
        tensorfile.TensorFile(path)
    path.write_bytes(b"\xff" * 12)  # the length is unsigned
    with pytest.raises(tensorfile.FormatError, match=r"^a header of 18446744073709551615 bytes"):
        tensorfile.TensorFile(path)
    header_file(path, {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 5)
    with pytest.raises(tensorfile.FormatError, match=r"data ends at byte 73, the file has 74$"):
        tensorfile.TensorFile(path)


def test_a_file_cut_after_opening_is_an_os_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"x": ROWS}, path)
    with tensorfile.TensorFile(path) as f:
        path.write_bytes(path.read_bytes()[:-20])
        with pytest.raises(OSError, match="ends before byte"):
            f.read("x")


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.int32]),
    data=st.data(),
)
def test_padded_batches_from_a_file_are_the_rows_in_memory(
    lengths: list[int], dtype: torch.dtype, data: st.DataObject, tmp_path_factory
) -> None:
    rows = torch.arange(sum(lengths) * 3).reshape(-1, 3).to(dtype)
    starts = torch.cumsum(torch.tensor(lengths), 0) - torch.tensor(lengths)
    chosen = torch.tensor(data.draw(st.lists(st.integers(0, len(lengths) - 1), min_size=1)))
    path = tmp_path_factory.mktemp("p") / "p.safetensors"
    save_file({"rows": rows}, path)
    width = max(lengths) + 1
    with tensorfile.TensorFile(path) as f:
        padded = f.rows("rows").padded(starts[chosen], torch.tensor(lengths)[chosen], width, 9)
    assert padded.shape == (len(chosen), width, 3) and padded.dtype == dtype
    for out, i in zip(padded, chosen.tolist(), strict=True):
        n = lengths[i]
        assert torch.equal(out[:n], rows[int(starts[i]) : int(starts[i]) + n])
        assert (out[n:] == 9).all()
