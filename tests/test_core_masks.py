"""Masks: block lists against a naive token mask built here, for every kind and odd layouts."""
import numpy as np
import pytest

from reference import block_mask, token_mask
from rettention import MASK_KINDS, SparseMask, TokenLayout

LAYOUTS = [
    TokenLayout((1, 64, 64), text_before=77),            # N = 4173: PixArt-like image + text
    TokenLayout((1, 25, 40)),                            # N = 1000, no text
    TokenLayout((3, 17, 23), text_after=31),             # odd video grid, text after
    TokenLayout((5, 9, 14), text_before=13, text_after=6),   # text on both sides
]


def visited(mask):
    out = np.zeros((mask.query_blocks, mask.key_blocks), dtype=bool)
    for q in range(mask.query_blocks):
        keys = mask.key_block_list(q)
        assert np.all(np.diff(keys) > 0), "key blocks must be ascending and unique"
        out[q, keys] = True
    return out


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.grid}+{l.text_before}+{l.text_after}")
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("density,block", [(0.03125, 64), (0.125, 128), (0.3, 32)])
def test_block_lists_match_naive_token_mask(layout, kind, density, block):
    mask = SparseMask(layout, density, kind, block_size=block)
    tokens = token_mask(layout.grid, layout.text_before, layout.text_after, kind, mask.window, block)
    expected = block_mask(tokens, block)
    np.testing.assert_array_equal(visited(mask), expected)
    # achieved density: every (query, key) pair inside a visited block, tails clipped
    n = layout.n_tokens
    sizes = np.minimum(block, n - np.arange(mask.key_blocks) * block)
    pairs = (expected * sizes[:, None] * sizes[None, :]).sum()
    assert mask.density == pytest.approx(pairs / n**2)
    asked = density * layout.image_tokens - (block if kind == "band" else 0)   # a band rounds to blocks
    assert mask.density >= min(1.0, asked * layout.image_tokens / n**2)
    assert mask.requested_density == density


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_window_sizes_follow_density(kind):
    layout = TokenLayout((9, 30, 52))
    for density in (0.03125, 0.0625, 0.125):
        mask = SparseMask(layout, density, kind)
        per_query = int(np.prod(mask.window)) * (layout.grid[0] if kind == "tube" else 1)
        assert abs(per_query / layout.image_tokens - density) < 0.15 * density


def test_text_rows_and_columns_are_dense():
    layout = TokenLayout((1, 32, 32), text_before=100, text_after=100)
    mask = SparseMask(layout, 0.03125, "local3d", block_size=64)
    blocks = visited(mask)
    assert blocks[0].all() and blocks[-1].all()                 # text query blocks see every key
    assert blocks[:, 0].all() and blocks[:, -1].all()           # every query block sees text keys


def test_density_one_covers_every_key():
    for kind in MASK_KINDS:
        mask = SparseMask(TokenLayout((2, 7, 9), text_before=5), 1.0, kind, block_size=16)
        assert mask.covers_all_keys and mask.density == 1.0


def test_masks_are_values_and_block_lists_move_to_a_device():
    layout = TokenLayout((1, 16, 16))
    a, b = SparseMask(layout, 0.1, "band", 64), SparseMask(layout, 0.1, "band", 64)
    assert a == b and hash(a) == hash(b) and a != SparseMask(layout, 0.2, "band", 64)
    counts, indices = a.block_lists("cpu")
    assert counts.dtype == indices.dtype and str(counts.dtype) == "torch.int32"
    assert indices.shape == (a.query_blocks, int(counts.max()))
    assert a.block_lists("cpu")[1] is indices                  # cached per device
    with pytest.raises(AttributeError):
        a.kind = "tube"


def test_large_layout_is_built_without_n_by_n_memory():
    layout = TokenLayout((33, 45, 80), text_after=256)          # HunyuanVideo 720p: N = 119056
    mask = SparseMask(layout, 0.03125, "local3d")
    assert mask.query_blocks == -(-119056 // 128)
    assert mask.density < 0.1


@pytest.mark.parametrize("bad, message", [
    (dict(density=0.0), "density"), (dict(density=-0.1), "density"), (dict(density=1.5), "density"),
    (dict(density=float("nan")), "density"), (dict(kind="ring"), "kind"), (dict(block_size=100), "block_size"),
])
def test_bad_mask_arguments_name_the_problem(bad, message):
    args = dict(layout=TokenLayout((1, 8, 8)), density=0.1, kind="band", block_size=64) | bad
    with pytest.raises(ValueError, match=message):
        SparseMask(**args)


def test_bad_layouts_name_the_problem():
    with pytest.raises(ValueError, match="grid"):
        TokenLayout((0, 4, 4))
    with pytest.raises(ValueError, match="text"):
        TokenLayout((1, 4, 4), text_before=-1)
    assert TokenLayout((4, 4)).grid == (1, 4, 4)


def test_block_size_follows_the_sequence_length():
    from rettention import block_size_for
    assert [block_size_for(n) for n in (100, 600, 1500, 2048, 75600)] == [16, 32, 64, 128, 128]


@pytest.mark.parametrize("grid, blocks", [((21, 45, 80), 19), ((21, 30, 52), 9), ((33, 45, 80), 29),
                                          ((13, 30, 45), 5), ((1, 128, 128), 5), ((1, 64, 72), 1)])
def test_band_is_an_odd_count_of_key_blocks_near_the_asked_density(grid, blocks):
    """At 3.125% a band visits 2 floor(x / 2) + 1 key blocks, x = 3.125% of the key blocks (the band
    FlexAttention was measured on for the kernel targets); every image query block the same count."""
    mask = SparseMask(TokenLayout(grid), 0.03125, "band")
    counts = mask.block_lists()[0].numpy()
    assert (counts == blocks).all()
    assert abs(blocks - 0.03125 * mask.key_blocks) <= 1
