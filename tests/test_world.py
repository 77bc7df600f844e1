"""The procedural world: deterministic, and its captions say what the images show."""

import numpy as np
import pytest

from seqlib.world import COLOURS, POSITIONS, VOCABULARY, render, scene


def test_scenes_are_deterministic_and_varied():
    assert scene(7) == scene(7) and scene(7).caption == scene(7).caption
    np.testing.assert_array_equal(np.asarray(render(scene(7))), np.asarray(render(scene(7))))
    captions = {scene(i).caption for i in range(200)}
    assert len(captions) > 190
    assert any(len(scene(i).things) == 2 for i in range(50)) and any(len(scene(i).things) == 1 for i in range(50))


def test_captions_use_only_the_world_vocabulary():
    words = {w for i in range(300) for w in scene(i).caption.split()}
    assert words <= set(VOCABULARY)


@pytest.mark.parametrize("index", range(40))
def test_each_named_colour_is_where_the_caption_puts_it(index):
    s = scene(index)
    pixels = np.asarray(render(s, 64)).astype(int)
    for thing in s.things:
        fx, fy = POSITIONS[thing.position]
        cx, cy = int(fx * 64), int(fy * 64)
        patch = pixels[cy - 3 : cy + 4, cx - 3 : cx + 4].reshape(-1, 3)
        if thing.shape == "ring":  # a ring is hollow: look along its outline instead
            r = int(0.5 * (0.28 if thing.size == "small" else 0.5) * 64)
            patch = pixels[cy, max(cx - r, 0) : cx - r + 3].reshape(-1, 3)
        distance = np.abs(patch - np.array(COLOURS[thing.colour])).sum(axis=1)
        assert (distance < 60).mean() > 0.3, (s.caption, thing)


def test_clutter_is_deterministic_and_outside_the_grammar_palette():
    from seqlib.world import BACKGROUNDS, clutter

    a, b = np.asarray(clutter(3)), np.asarray(clutter(3))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - np.asarray(clutter(4))).mean() > 5
    # arbitrary colours: most clutter backgrounds are none of the world's four
    corners = [tuple(np.asarray(clutter(i))[0, 0]) for i in range(50)]
    assert sum(c in BACKGROUNDS.values() for c in corners) < 5
