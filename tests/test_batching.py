"""spamgpt.data.batching: packed sequences, right padding and batch orders."""

import itertools

import pytest
import torch

from spamgpt.data.batching import PackedSequences, bucketed_order, padded_width, sorted_order


def packed_ids(seqs: list[list[int]]) -> PackedSequences:
    return PackedSequences(
        torch.tensor([t for s in seqs for t in s], dtype=torch.int64),
        torch.tensor([len(s) for s in seqs], dtype=torch.int64),
    )


SEQS = [[11, 12, 13], [21], [31, 32, 33, 34, 35], [41, 42]]


def test_batch_of_token_rows_is_right_padded_to_a_width_from_its_longest() -> None:
    """Padded to padded_width of the batch's longest (9: 16), not to the set's longest (70),
    and never past the set's longest (70: not 80)."""
    seqs = [list(range(100 * i, 100 * i + n)) for i, n in enumerate([3, 1, 70, 9])]
    packed = packed_ids(seqs)
    assert len(packed) == 4
    rows, lengths = packed.batch(torch.tensor([3, 1, 0]), pad_value=-1)
    assert rows.shape == (3, 16) and rows.dtype == torch.int64
    assert rows.tolist() == [seqs[3] + [-1] * 7, seqs[1] + [-1] * 15, seqs[0] + [-1] * 13]
    assert lengths.tolist() == [9, 1, 3]
    assert packed.batch(torch.tensor([2]), pad_value=0)[0].shape == (1, 70)


def test_batch_of_one_and_of_all() -> None:
    packed = packed_ids(SEQS)
    rows, lengths = packed.batch(torch.tensor([2]), pad_value=0)
    assert rows.tolist() == [[31, 32, 33, 34, 35]] and lengths.tolist() == [5]
    rows, lengths = packed.batch(torch.arange(4), pad_value=0)
    assert rows.shape == (4, 5)
    for i, seq in enumerate(SEQS):
        assert rows[i].tolist() == seq + [0] * (5 - len(seq))


def test_batch_of_feature_rows() -> None:
    """Hidden states of a frozen trunk: each token is a vector; padding fills whole vectors."""
    lengths = torch.tensor([2, 4, 1])
    rows = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)  # token t = [3t, 3t+1, 3t+2]
    packed = PackedSequences(rows, lengths)
    out, out_lengths = packed.batch(torch.tensor([2, 0]), pad_value=0.5)
    assert out.shape == (2, 4, 3) and out.dtype == torch.float32  # 2 rounded up: 4, the longest
    assert out[0, 0].tolist() == rows[6].tolist()  # sequence 2 is token 6
    assert (out[0, 1:] == 0.5).all()
    assert out[1, :2].tolist() == rows[0:2].tolist()  # sequence 0 is tokens 0, 1
    assert (out[1, 2:] == 0.5).all()
    assert out_lengths.tolist() == [1, 2]
    assert packed.rows.tolist() == rows.tolist()  # padding wrote into a copy, not the store


def test_padded_width_rounds_up_a_little_to_few_widths() -> None:
    widths = {longest: padded_width(longest, cap=1024) for longest in range(1, 1025)}
    for longest, width in widths.items():
        assert longest <= width <= 1024 and width % 8 == 0
        assert width - longest < 8 if longest <= 64 else width <= 1.25 * longest
    assert sorted(set(widths.values()))[:12] == [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128]
    assert len(set(widths.values())) == 8 + 4 * 4  # multiples of 8 to 64, 4 per doubling on
    assert padded_width(61, cap=62) == 62 and padded_width(62, cap=62) == 62


def test_batch_does_not_modify_the_store() -> None:
    packed = packed_ids(SEQS)
    before = packed.rows.clone()
    packed.batch(torch.tensor([1, 2]), pad_value=-7)
    assert torch.equal(packed.rows, before)


@pytest.mark.parametrize(("n_rows", "lengths"), [(5, [2, 2]), (3, [2, 2]), (0, [1])])
def test_lengths_must_cover_rows(n_rows: int, lengths: list[int]) -> None:
    with pytest.raises(ValueError, match="lengths sum to"):
        PackedSequences(torch.zeros(n_rows), torch.tensor(lengths))


# --- orders ---


def skewed_lengths(n: int = 2000, seed: int = 0) -> torch.Tensor:
    """Mostly short messages, a long tail: like SMS token counts."""
    g = torch.Generator().manual_seed(seed)
    short = torch.randint(3, 40, (n,), generator=g)
    long = torch.randint(40, 300, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.15, long, short)


def padded_size(order: list[torch.Tensor], lengths: torch.Tensor) -> int:
    return sum(len(b) * int(lengths[b].max()) for b in order)


def assert_partition(order: list[torch.Tensor], n: int, batch_size: int) -> None:
    everything = torch.cat(order)
    assert sorted(everything.tolist()) == list(range(n))  # each index exactly once
    assert all(1 <= len(b) <= batch_size for b in order)
    assert sum(len(b) < batch_size for b in order) <= -(-n // (batch_size * 32))  # one per bucket


@pytest.mark.parametrize(("n", "batch_size"), [(2000, 8), (1001, 16), (7, 8), (300, 1)])
def test_bucketed_order_is_a_partition(n: int, batch_size: int) -> None:
    lengths = skewed_lengths(n)
    order = bucketed_order(lengths, batch_size, torch.Generator().manual_seed(0))
    assert_partition(order, n, batch_size)


def test_bucketed_order_is_seeded() -> None:
    lengths = skewed_lengths()

    def order(seed: int) -> list[list[int]]:
        return [b.tolist() for b in bucketed_order(lengths, 8, torch.Generator().manual_seed(seed))]

    assert order(1) == order(1)
    assert order(1) != order(2)
    # one generator, two epochs: a new order each epoch
    g = torch.Generator().manual_seed(1)
    first, second = bucketed_order(lengths, 8, g), bucketed_order(lengths, 8, g)
    assert [b.tolist() for b in first] != [b.tolist() for b in second]


def test_bucketed_order_pads_much_less_than_random() -> None:
    lengths = skewed_lengths()
    g = torch.Generator().manual_seed(0)
    bucketed = padded_size(bucketed_order(lengths, 8, g), lengths)
    random = padded_size(list(torch.randperm(len(lengths), generator=g).split(8)), lengths)
    real = int(lengths.sum())
    assert bucketed < 0.5 * random
    assert bucketed < 1.3 * real  # close to no padding at all


def test_bucketed_order_batches_are_not_sorted_globally() -> None:
    """Training still sees mixed lengths over an epoch: batches are shuffled, not longest-first."""
    lengths = skewed_lengths()
    order = bucketed_order(lengths, 8, torch.Generator().manual_seed(0))
    widths = [int(lengths[b].max()) for b in order]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


@pytest.mark.parametrize(("n", "max_tokens"), [(2000, 512), (13, 64), (3, 1000), (50, 1)])
def test_sorted_order_is_longest_first_within_a_token_budget(n: int, max_tokens: int) -> None:
    lengths = skewed_lengths(n)
    order = sorted_order(lengths, max_tokens)
    everything = torch.cat(order)
    assert sorted(everything.tolist()) == list(range(n))
    cap = int(lengths.max())
    for batch in order:  # the padded batch fits the budget (a single longer message may not)
        width = padded_width(int(lengths[batch].max()), cap)
        assert len(batch) == 1 or len(batch) * width <= max_tokens
    ordered = lengths[everything].tolist()
    assert ordered == sorted(ordered, reverse=True)
    if n >= 1000:  # many similar lengths per batch: little padding, short ones in big batches
        assert padded_size(order, lengths) < 1.3 * int(lengths.sum())
        assert len(order[-1]) > len(order[0])


def test_sorted_order_is_stable_for_ties() -> None:
    lengths = torch.tensor([16, 40, 16, 40, 16])  # padded widths: themselves
    assert [b.tolist() for b in sorted_order(lengths, 80)] == [[1, 3], [0, 2, 4]]


def test_batches_come_in_few_shapes() -> None:
    """Batches have a few widths, and inference batches one shape per width (bf16 autocast on
    a CPU caches a kernel per shape), however many distinct lengths the messages have."""
    lengths = skewed_lengths(5000)
    packed = PackedSequences(torch.zeros(int(lengths.sum())), lengths)
    bound = int(lengths.max()) / 16 + 1
    training = bucketed_order(lengths, 8, torch.Generator().manual_seed(0))
    assert len({packed.batch(b, pad_value=0)[0].shape[1] for b in training}) <= bound
    inference = sorted_order(lengths, 1024)
    shapes = {tuple(packed.batch(b, pad_value=0)[0].shape) for b in inference}
    widths = {width for _, width in shapes}
    assert len(widths) <= bound
    assert len(shapes) <= len(widths) + 1  # each width one batch size, but the last batch
    longest = {(len(b), int(lengths[b].max())) for b in inference}  # padded to their longest
    assert len(longest) > 5 * len(shapes)


def test_sorted_order_can_fill_its_last_batch_so_many_calls_add_no_shape() -> None:
    """spamgpt predict's chunks: each call's odd-sized last batch would be a new shape."""
    shapes = set()
    for seed in range(5):
        lengths = torch.randint(1, 40, (301 + seed,), generator=torch.Generator().manual_seed(seed))
        batches = sorted_order(lengths, 256, full_last=True)
        assert set(torch.cat(batches).tolist()) == set(range(len(lengths)))
        for b in batches:
            width = padded_width(int(lengths[b].max()), int(lengths.max()))
            shapes.add((len(b), width))
            assert len(b) == 256 // width
    assert len(shapes) <= len({padded_width(n, 39) for n in range(1, 40)})


def test_one_width_batches_pad_no_message_past_its_own_width() -> None:
    """Longest first as without it, but a batch ends where the padded width narrows, as
    well as at the token budget: 61 is the set's longest (its width, capped), 56 and 40 are
    their own widths, 33 pads to 40 as 40 does, 27 to 32, 9 to 16."""
    lengths = torch.tensor([33, 61, 9, 40, 27, 56, 33])
    together = sorted_order(lengths, 1024)
    assert [b.tolist() for b in together] == [[1, 5, 3, 0, 6, 4, 2]]
    widths = sorted_order(lengths, 1024, one_width=True)
    assert [b.tolist() for b in widths] == [[1], [5], [3, 0, 6], [4], [2]]
    assert [b.tolist() for b in sorted_order(lengths, 80, one_width=True)] == [
        [1],
        [5],
        [3, 0],
        [6],
        [4],
        [2],
    ]  # fmt: skip   (the budget: two of width 40 in 80 tokens)
    # A set of one width: the budget alone cuts it, as without one_width.
    same = torch.tensor([12, 16, 9, 15, 13])
    assert [b.tolist() for b in sorted_order(same, 32, one_width=True)] == [[1, 3], [4, 0], [2]]


@pytest.mark.parametrize(("n", "max_tokens"), [(2000, 1024), (13, 64), (50, 1)])
def test_one_width_batches_are_sorted_order_cut_where_the_width_narrows(
    n: int, max_tokens: int
) -> None:
    lengths = skewed_lengths(n)
    cap = int(lengths.max())
    order = sorted_order(lengths, max_tokens, one_width=True)
    assert torch.cat(order).tolist() == torch.cat(sorted_order(lengths, max_tokens)).tolist()
    for batch in order:
        assert len({padded_width(int(x), cap) for x in lengths[batch]}) == 1
        width = padded_width(int(lengths[batch].max()), cap)
        assert len(batch) <= max(1, max_tokens // width)
    for before, after in itertools.pairwise(order):  # cut short only where it narrows
        width = padded_width(int(lengths[before].max()), cap)
        if len(before) < max(1, max_tokens // width):
            assert padded_width(int(lengths[after].max()), cap) < width
    assert padded_size(order, lengths) <= padded_size(sorted_order(lengths, max_tokens), lengths)


# --- pinned by mutation testing (tools/mutate.py batching) ---

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spamgpt.data import tensorfile  # noqa: E402
from spamgpt.data.batching import ModelInputs, inference_tokens  # noqa: E402


def padded_reference(seqs: list[list[int]], indices: list[int], pad: int) -> list[list[int]]:
    """Right padding by hand: each chosen sequence, then `pad` up to padded_width."""
    longest = max(len(seqs[i]) for i in indices)
    width = padded_width(longest, max(len(s) for s in seqs))
    return [seqs[i] + [pad] * (width - len(seqs[i])) for i in indices]


# every message has a token at least (tokenized.encode: an empty text is <|endoftext|>)
sequence_sets = st.lists(
    st.lists(st.integers(0, 50_000), min_size=1, max_size=90), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None)
@given(seqs=sequence_sets, data=st.data(), pad=st.integers(-5, 5))
def test_any_batch_is_its_sequences_right_padded_in_memory_and_from_a_file(
    seqs: list[list[int]], data: st.DataObject, pad: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    indices = data.draw(st.lists(st.integers(0, len(seqs) - 1), min_size=1, max_size=8))
    expected = padded_reference(seqs, indices, pad)
    packed = packed_ids(seqs)
    rows, lengths = packed.batch(torch.tensor(indices), pad_value=pad)
    assert rows.tolist() == expected and lengths.tolist() == [len(seqs[i]) for i in indices]
    path = tmp_path_factory.mktemp("rows") / "ids.safetensors"
    tensorfile.create(path, {"ids": (torch.int64, (len(packed.rows),))})
    with tensorfile.TensorFile(path, writable=True) as f:
        f.write("ids", 0, packed.rows)
        from_file = PackedSequences(f.rows("ids"), packed.lengths)
        rows, lengths = from_file.batch(torch.tensor(indices), pad_value=pad)
        assert rows.tolist() == expected and lengths.tolist() == [len(seqs[i]) for i in indices]


def test_an_empty_sequence_is_all_padding() -> None:
    """In memory; the pipeline's messages have one token at least."""
    packed = packed_ids([[7], []])  # one row in all: padding must not index past it
    rows, lengths = packed.batch(torch.tensor([1, 0]), pad_value=-1)
    assert rows.tolist() == [[-1], [7]] and lengths.tolist() == [0, 1]


def test_an_empty_set_of_sequences() -> None:
    empty = torch.zeros(0, dtype=torch.int64)
    assert PackedSequences(empty, empty).longest == 0 and len(PackedSequences(empty, empty)) == 0
    assert sorted_order(empty, 64) == [] and sorted_order(empty, 64, full_last=True) == []


def test_model_inputs_pad_token_ids_with_zero() -> None:
    inputs = ModelInputs(packed_ids(SEQS), frozen_blocks=None)
    assert len(inputs) == 4
    rows, lengths = inputs.batch(torch.tensor([1, 3]))
    # padded to padded_width(2, cap 5): the set's longest
    assert rows.tolist() == [[21, 0, 0, 0, 0], [41, 42, 0, 0, 0]] and lengths.tolist() == [1, 2]


def test_inference_batch_tokens_by_device() -> None:
    assert inference_tokens(torch.device("cpu")) == 1024
    assert inference_tokens(torch.device("cuda")) == 32768
    assert inference_tokens(torch.device("mps")) == 32768


def bucketed_reference(lengths: torch.Tensor, batch_size: int, seed: int) -> set[tuple[int, ...]]:
    """The batches bucketed_order must cut: the seeded shuffle's buckets of 32 batches, each
    sorted by length (ties in shuffled order), cut into batches (in any order)."""
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = set()
    for start in range(0, len(shuffled), 32 * batch_size):
        bucket = sorted(shuffled[start : start + 32 * batch_size], key=lambda i: int(lengths[i]))
        batches |= {tuple(bucket[i : i + batch_size]) for i in range(0, len(bucket), batch_size)}
    return batches


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=400),  # many ties
    batch_size=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
@example(lengths=[1, 2] * 200, batch_size=5, seed=0)  # ties past where torch sorts unstably
def test_bucketed_order_cuts_sorted_buckets_of_32_batches(
    lengths: list[int], batch_size: int, seed: int
) -> None:
    lengths = torch.tensor(lengths)
    order = bucketed_order(lengths, batch_size, torch.Generator().manual_seed(seed))
    assert {tuple(b.tolist()) for b in order} == bucketed_reference(lengths, batch_size, seed)
    assert len(order) == sum(
        -(-min(32 * batch_size, len(lengths) - s) // batch_size)
        for s in range(0, len(lengths), 32 * batch_size)
    )


def test_sorted_order_keeps_ties_in_their_order_however_many() -> None:
    lengths = torch.tensor([8] * 70 + [16] * 70)  # past the size where torch sorts unstably
    order = torch.cat(sorted_order(lengths, 64)).tolist()
    assert order == list(range(70, 140)) + list(range(70))
