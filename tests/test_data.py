"""Photos a careful user would want to hear about before training (issue 27)."""

from __future__ import annotations

from PIL import Image

from seqlib.data import photo_warnings


def test_tiny_and_sliver_photos_are_named_before_training(tmp_path):
    sizes = {"fine.png": (64, 64), "dot.png": (1, 1), "strip.png": (2000, 20), "tall.png": (40, 200)}
    for name, size in sizes.items():
        Image.new("RGB", size, "red").save(tmp_path / name)
    files = sorted(tmp_path.iterdir())
    small, thin = photo_warnings(files, 64)
    assert "2 photos are under half" in small and "dot.png (1x1)" in small and "strip.png (2000x20)" in small
    assert "2 photos are over 3x" in thin and "tall.png (40x200)" in thin and "fine.png" not in small + thin
    assert photo_warnings([tmp_path / "fine.png"], 64) == []
