"""Reliability: crashes at any write step, hostile inputs, exhausted capacity, no pickles."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqlib.api import Library
from seqlib.cli import main
from seqlib.data import load_images

from .conftest import FAST

CRASHY = Path(__file__).with_name("crashy.py")


def _state(lib: Library) -> tuple:
    """What a user sees: versions with their messages and concepts, and tags by version.
    (Commit ids differ between two runs of the same command: commits carry timestamps.)"""
    versions = {cid: v for v, cid in lib.store.entries()}
    history = [(v, c.message, [x.name for x in c.concepts]) for v, _, c in lib.log()]
    return history, {t: versions[cid] for t, cid in lib.store.tags().items()}


OPERATIONS = {
    "add": lambda photos, tmp: (
        ["add", "newone", str(photos / "robot"), "--steps", "1", "-K", "1", "--s-b", "1"] + ["--hvp", "forward-diff"]
    ),  # the cheapest iteration: every write step is still there, preview included
    "rm": lambda photos, tmp: ["rm", "emblem"],
    "tag": lambda photos, tmp: ["tag", "keep", "2"],
    "revert": lambda photos, tmp: ["revert", "2"],
    "import": lambda photos, tmp: ["import", "adopted", str(tmp / "foreign.safetensors"), "--force"],
}


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_sigkill_at_any_write_step_leaves_the_old_or_the_new_state(op, seqlora_store, photos, tmp_path, cli_processes):
    if op == "import":
        # at weight 0.5: not emblem's own tensors, which import would refuse as a duplicate
        Library.open(seqlora_store).export({"emblem": 0.5}, tmp_path / "foreign.safetensors", "kohya")
    args = OPERATIONS[op](photos, tmp_path)
    # a clean run on a copy counts the write steps and gives the "new" state
    clean = tmp_path / "clean" / ".seqlib"
    shutil.copytree(seqlora_store, clean)
    [done] = cli_processes([(["--store", str(clean), *args], 0)])
    assert done.returncode == 0, done.stderr
    total = done.write_steps
    new_state, old_state = _state(Library.open(clean)), _state(Library.open(seqlora_store))
    assert new_state != old_state
    # kill at points spread over the run, always including the last steps before the ref moves
    points = sorted({1, 2, *(int(total * f) for f in (0.25, 0.5, 0.75)), total - 3, total - 1} - {0})
    for k in points:
        shutil.copytree(seqlora_store, tmp_path / f"k{k}" / ".seqlib")
    runs = cli_processes([(["--store", str(tmp_path / f"k{k}" / ".seqlib"), *args], k) for k in points], threads=1)
    for k, killed in zip(points, runs):
        assert killed.returncode == -9, (k, killed.stderr)
        lib = Library.open(tmp_path / f"k{k}" / ".seqlib")
        assert _state(lib) in (old_state, new_state), k
        report = lib.verify(check_base=False)
        assert report["ok"], (k, report["problems"])


def _photo(path: Path, mode: str = "RGB", size=(64, 64), **save) -> Path:
    colours = {"RGB": (200, 30, 30), "L": 128, "RGBA": (200, 30, 30, 128), "CMYK": (0, 200, 200, 0), "P": 3}
    Image.new(mode, size, colours[mode]).save(path, **save)
    return path


def test_every_kind_of_image_loads_as_rgb(tmp_path):
    files = [
        _photo(tmp_path / "grey.png", "L"),
        _photo(tmp_path / "rgba.png", "RGBA"),
        _photo(tmp_path / "cmyk.jpg", "CMYK"),
        _photo(tmp_path / "palette.png", "P"),
        _photo(tmp_path / "tiny.png", size=(3, 5)),
        _photo(tmp_path / "huge.png", size=(3000, 2000)),
    ]
    wide = np.zeros((16, 65536 // 16 * 0 + 16), dtype=np.uint16) + 32768  # mid grey in 16 bits
    Image.fromarray(wide).save(tmp_path / "sixteen.png")
    files.append(tmp_path / "sixteen.png")
    # EXIF orientation 3 (rotated 180°): left half red on disk must come out on the right
    half = np.zeros((32, 64, 3), np.uint8)
    half[:, :32] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(half).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    files.append(tmp_path / "rotated.jpg")
    x = load_images(files, 64)
    assert x.shape == (len(files), 3, 64, 64)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert abs(float(x[-2].mean())) < 0.05  # 16-bit mid grey stays mid grey, not clipped to white
    assert float(x[1, 1].mean()) > 0.0  # RGBA composited on white, not on black
    rotated = x[-1]
    assert rotated[0, :, 40:].mean() > 0.5 and rotated[0, :, :24].mean() < -0.5


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), "cannot read broken.png"),
        (lambda d: (d / "cut.png").write_bytes(_png_bytes()[:60]), "cannot read cut.png"),
        (lambda d: None, "no images"),
    ],
)
def test_bad_images_are_one_line_errors_and_change_nothing(store_copy, tmp_path, capsys, make, message):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    make(folder)
    before = Library.open(store_copy).store.entries()
    code = main(["--store", str(store_copy), "add", "newone", str(folder)])
    err = capsys.readouterr().err
    assert code == 3 and message in err and "Traceback" not in err
    assert Library.open(store_copy).store.entries() == before


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def test_non_images_are_skipped_with_a_warning(store_copy, photos, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(photos / "robot", folder)
    (folder / "notes.txt").write_text("x")
    (folder / "Thumbs.db").write_bytes(b"x")
    code = main(["--store", str(store_copy), "add", "newone", str(folder), "--steps", "1", "-K", "1"])
    err = capsys.readouterr().err
    assert code == 0 and "skipped 2 files that are not images" in err
    assert len(Library.open(store_copy).head().concept("newone").images) == 4


@pytest.mark.parametrize("name", ["a/b", "..", "my dog", "Dog", "", "x" * 41, "-x", "ü"])
def test_invalid_names_are_refused(store_copy, photos, capsys, name):
    code = main(["--store", str(store_copy), "add", "--", name, str(photos / "robot")])
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_full_library_refuses_with_the_layer_named(tmp_path, photos, capsys):
    from seqlib.config import TrainConfig

    lib = Library.init(tmp_path / ".seqlib", rank=32)  # 64-wide layers hold 2 concepts
    for name in ("mascot", "emblem"):  # one round each: only the capacity they take matters here
        lib.add(name, photos / name, config=TrainConfig(**FAST | {"steps": 1}), preview=False)
    assert lib.status().fits == 0
    before = lib.store.entries()
    code = main(["--store", str(tmp_path / ".seqlib"), "add", "robot", str(photos / "robot")])
    err = capsys.readouterr().err
    assert code == 3 and "no room for a rank-32 concept" in err and "down_blocks.1" in err
    assert lib.store.entries() == before


def test_nothing_is_ever_unpickled():
    source = "\n".join(p.read_text() for p in Path(__file__).parents[1].joinpath("seqlib").rglob("*.py"))
    assert not re.search(r"torch\.load\(|import pickle|pickle\.loads?\(|weights_only=False", source)


def test_a_name_whose_token_the_base_already_has_is_refused(empty_store, tmp_path, photos, capsys):
    from transformers import CLIPTokenizer

    folder = tmp_path / "sd"
    shutil.copytree(empty_store / "base", folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    tokenizer.add_tokens(["<clash>"])
    tokenizer.save_pretrained(folder / "tokenizer")
    Library.init(tmp_path / ".seqlib", base=str(folder))
    code = main(["--store", str(tmp_path / ".seqlib"), "add", "clash", str(photos / "robot")])
    assert code == 2 and "already a token" in capsys.readouterr().err
