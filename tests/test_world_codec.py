"""The image codec (codes <-> pixels) and the shortcut detector `scene_detections` against the pixel detector."""

import numpy as np
import pytest

from gvu.eval.prompts import build_train
from gvu.world.detect import detect
from gvu.world.render import blank_tokens, decode, encode, patch_table
from gvu.world.scene import Obj, realise, scene_detections, scene_tokens
from gvu.world.spec import (COLORS, EMPTY, GRID, IMAGE_SIZE, NUM_CODES, NUM_TOKENS, PARTS, SHAPES, code_of,
                            parse_code)


@pytest.fixture(scope="module")
def scenes() -> list[list[Obj]]:
    rng = np.random.default_rng(0)
    return [realise(row, rng) for row in build_train("shapes", seed=1, n=150)]


def random_dense_scene(rng: np.random.Generator, p_fill: float = 0.7) -> list[Obj]:
    """Objects packed onto the grid with no regard for prompts: neighbours in adjacent cells, any size."""
    occupied = np.zeros((GRID, GRID), dtype=bool)
    objs = []
    for r in range(GRID):
        for c in range(GRID):
            if occupied[r, c] or rng.random() > p_fill:
                continue
            large = r + 1 < GRID and c + 1 < GRID and not occupied[r:r + 2, c:c + 2].any() and rng.random() < 0.3
            span = 2 if large else 1
            occupied[r:r + span, c:c + span] = True
            objs.append(Obj(SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))],
                            "large" if large else "small", r, c))
    return objs


def test_codes_round_trip():
    assert NUM_CODES == 401
    seen = set()
    for shape in SHAPES:
        for color in COLORS:
            for part in PARTS:
                code = code_of(shape, color, part)
                assert parse_code(code) == (shape, color, part)
                seen.add(code)
    assert seen == set(range(1, NUM_CODES))
    assert parse_code(EMPTY) is None
    for bad in (-1, NUM_CODES):
        with pytest.raises(ValueError, match="outside"):
            parse_code(bad)


def test_all_patches_distinct():
    table = patch_table()
    assert table.shape == (NUM_CODES, IMAGE_SIZE // GRID, IMAGE_SIZE // GRID, 3)
    assert len({table[c].tobytes() for c in range(NUM_CODES)}) == NUM_CODES
    # Every code survives a round trip on its own, wherever it sits.
    rng = np.random.default_rng(0)
    tokens = np.zeros((NUM_CODES, NUM_TOKENS), dtype=np.int64)
    tokens[np.arange(NUM_CODES), rng.integers(NUM_TOKENS, size=NUM_CODES)] = np.arange(NUM_CODES)
    np.testing.assert_array_equal(encode(decode(tokens)), tokens)


def test_decode_encode_exact_inverses(scenes):
    tokens = np.stack([scene_tokens(s) for s in scenes])  # [N, T]
    pixels = decode(tokens)
    assert pixels.shape == (len(scenes), IMAGE_SIZE, IMAGE_SIZE, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(encode(pixels), tokens)
    np.testing.assert_array_equal(decode(encode(pixels)), pixels)
    # Batched and one-at-a-time agree; extra leading dims are kept.
    np.testing.assert_array_equal(decode(tokens[3]), pixels[3])
    np.testing.assert_array_equal(encode(pixels[3]), tokens[3])
    assert decode(tokens[:6].reshape(2, 3, NUM_TOKENS)).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(encode(pixels[:6].reshape(2, 3, IMAGE_SIZE, IMAGE_SIZE, 3)),
                                  tokens[:6].reshape(2, 3, NUM_TOKENS))
    blank = decode(blank_tokens())
    assert (blank == blank[0, 0]).all()


def test_encode_recovers_codes_from_noisy_render(scenes):
    rng = np.random.default_rng(1)
    tokens = np.stack([scene_tokens(s) for s in scenes[:60]])
    pixels = decode(tokens).astype(np.int32)
    noisy = np.clip(pixels + rng.integers(-3, 3, size=pixels.shape, endpoint=True), 0, 255).astype(np.uint8)
    assert (noisy != pixels).mean() > 0.5  # really noisy, not a clean render
    np.testing.assert_array_equal(encode(noisy), tokens)


@pytest.mark.parametrize("tokens", [np.zeros(NUM_TOKENS - 1, dtype=np.int64), np.zeros((2, NUM_TOKENS + 1)),
                                    np.zeros((GRID, GRID), dtype=np.int64)])
def test_decode_rejects_bad_shapes(tokens):
    with pytest.raises(ValueError, match="image tokens"):
        decode(tokens)


@pytest.mark.parametrize("bad", [-1, NUM_CODES, 10_000])
def test_decode_rejects_bad_codes(bad):
    tokens = blank_tokens()
    tokens[5] = bad
    with pytest.raises(ValueError, match="image codes"):
        decode(tokens)


@pytest.mark.parametrize("shape", [(IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE - 1, IMAGE_SIZE, 3),
                                   (IMAGE_SIZE, IMAGE_SIZE, 4)])
def test_encode_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="expected images"):
        encode(np.zeros(shape, dtype=np.uint8))


def test_scene_tokens_rejects_overlap():
    with pytest.raises(ValueError, match="overlap"):
        scene_tokens([Obj("circle", "red", "large", 0, 0), Obj("star", "blue", "small", 1, 1)])


def test_scene_detections_match_pixel_detector(scenes):
    rng = np.random.default_rng(2)
    dense = [random_dense_scene(rng) for _ in range(60)]
    assert sum(len(s) for s in dense) > 60 * 15  # crowded grids: neighbours in adjacent cells
    for objs in list(scenes) + dense:
        dets = detect(decode(scene_tokens(objs)))
        assert dets.malformed == 0
        assert dets.objects == scene_detections(objs).objects, objs
