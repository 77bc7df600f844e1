"""Held-out concepts: the few-shot photos the quickstart, the tests and the benchmark use."""

import numpy as np

from seqlib.heldout import EXAMPLES, FAMILIES, PALETTE, examples, held_out, pair_photo, photo
from seqlib.world import COLOURS, SHAPES


def test_enough_distinct_concepts_and_the_examples_come_first():
    concepts = held_out(40)
    assert len({c.key for c in concepts.values()}) == 40
    assert list(concepts)[: len(FAMILIES)] == list(FAMILIES)
    assert list(examples()) == list(EXAMPLES)
    for c in concepts.values():
        assert len({c.body, c.accent, c.detail}) == 3  # multi-part: three colours
        assert c.family not in SHAPES  # nothing the world grammar names


def test_metric_identities_are_disjoint_from_the_benchmark():
    bench = {c.key for c in held_out(32).values()}
    metric = {c.key for c in held_out(600, namespace="metric").values()}
    assert len(metric) == 600
    assert not bench & metric


def test_photos_are_deterministic_and_varied():
    c = held_out(5)["mascot4"]
    a, b, other = (np.asarray(photo(c, i)) for i in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 64, 3)
    assert np.abs(a.astype(int) - other).mean() > 5  # pose, scale, position and background change


def test_concept_colours_are_in_the_photo():
    for c in held_out(8).values():
        pixels = np.asarray(photo(c, 0)).reshape(-1, 3).astype(int)
        for part in (c.body, c.accent):
            nearest = np.abs(pixels - np.array(PALETTE[part])).sum(-1).min()
            assert nearest < 30, (c.name, part)
    assert "mascot" not in COLOURS


def test_pair_photo_puts_one_concept_in_each_half():
    concepts = held_out(4)
    left, right = concepts["emblem"], concepts["robot"]
    im = np.asarray(pair_photo(left, right, 0)).astype(int)

    def has(half, colour):
        return np.abs(half.reshape(-1, 3) - np.array(PALETTE[colour])).sum(-1).min() < 30

    body_only_right = {right.body} - {left.body, left.accent, left.detail}
    for colour in body_only_right:
        assert has(im[:, 32:], colour) and not has(im[:, :32], colour)
