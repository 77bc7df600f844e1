"""Hostile inputs: photos, LoRA files, arguments and environments a user can bring.

Each is refused with one line, a non-zero exit code of its class (2 usage, 3 data, 4
environment), no traceback, and the store's bytes unchanged; or, for odd but valid photos,
accepted and read correctly.
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from seqlib.api import Library
from seqlib.cli import main
from seqlib.data import MAX_PIXELS, WORKING_SIDE, open_image
from seqlib.errors import DataError
from seqlib.export import kohya_key


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _refused(store: Path, capsys, args: list[str], code: int, message: str) -> None:
    before = _digest(store)
    got = main(["--store", str(store), *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert got == code, (args, got, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last, (args, err)
    assert _digest(store) == before


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels in a few bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# ---- photos ------------------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_before_decoding(store_copy, photos, tmp_path, capsys):
    folder = tmp_path / "bomb"
    folder.mkdir()
    for p in (photos / "robot").iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    _png_header_only(folder / "zz_bomb.png", 50_000, 50_000)
    _refused(store_copy, capsys, ["add", "newone", str(folder)], 3, "zz_bomb.png claims too many pixels")


def test_huge_rotated_and_odd_mode_photos_are_read_upright_and_small(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("L", (8000, 8000), 128).save(big, quality=50)
    start = time.perf_counter()
    im = open_image(big)
    assert max(im.size) <= WORKING_SIDE and im.mode == "RGB"
    assert time.perf_counter() - start < 10

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("RGB", (40, 20), (200, 10, 10)).save(rotated, exif=exif)
    assert open_image(rotated).size == (20, 40)

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert open_image(tmp_path / "cmyk.jpg").mode == "RGB"
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(open_image(tmp_path / "deep.png")).min() == 255  # 16-bit white stays white
    Image.new("L", (16, 16), 7).save(tmp_path / "grey.png")
    assert open_image(tmp_path / "grey.png").getpixel((0, 0)) == (7, 7, 7)

    _png_header_only(tmp_path / "wide.png", MAX_PIXELS // 10 + 1, 11)
    with pytest.raises(DataError, match="MP"):
        open_image(tmp_path / "wide.png")


# ---- LoRA files for import -----------------------------------------------------------------


def _lora_cases(layer) -> dict[str, dict[str, torch.Tensor]]:
    stem, n, m = kohya_key(layer.name), layer.out_features, layer.in_features
    down, up = f"{stem}.lora_down.weight", f"{stem}.lora_up.weight"
    nan = torch.zeros(4, m)
    nan[0, 0] = float("nan")
    return {
        "wrong shape": {down: torch.zeros(4, m + 3), up: torch.zeros(n, 4)},
        "ranks disagree": {down: torch.zeros(4, m), up: torch.zeros(n, 3)},
        "no up matrix": {down: torch.zeros(4, m)},
        "nan": {down: nan, up: torch.ones(n, 4)},
        "one-dimensional": {down: torch.zeros(4 * m), up: torch.zeros(n, 4)},
        "all zero": {down: torch.zeros(4, m), up: torch.zeros(n, 4)},
    }


EXPECTED = {
    "wrong shape": "does not fit this base's",
    "ranks disagree": "up has rank 3 but down has rank 4",
    "no up matrix": "has no up",
    "nan": "NaN or infinite",
    "one-dimensional": "expected 2-D matrices",
    "all zero": "changes no weight",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_hostile_lora_files_are_refused_before_the_store_is_touched(store_copy, tmp_path, capsys, case):
    layer = Library.open(store_copy).head().library.layers[0]
    path = tmp_path / "hostile.safetensors"
    save_file(_lora_cases(layer)[case], str(path))
    _refused(store_copy, capsys, ["import", "theirs", str(path)], 3, EXPECTED[case])


# ---- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compose", "mascot", "-p", "<mascot>", "--device", "tpu"], "--device tpu"),
        (["compose", "mascot", "-p", "<mascot>", "--size", "9"], "multiple of 8"),
        (["compose", "mascot=inf", "-p", "<mascot>"], "finite number"),
        (["compose", "mascot", "-p", "<mascot>", "--seed", str(2**64)], "--seed"),
        (["compose", "mascot", "-p", "<mascot>", "--steps", "5000"], "--steps"),
        (["compose", "mascot", "-p", "<mascot>", "--guidance", "nan"], "not a finite number"),
        (["gc", "--grace", "-5"], "--grace"),
        (["add", "newone", ".", "--alpha", "nan"], "not a finite number"),
        (["add", "newone", ".", "--beta", "-1"], "--beta"),
        (["add", "café", "."], "may contain only a-z"),
        (["export", "mascot", "-o", "x.safetensors", "--format", "pickle"], "--format"),
        (["checkout", "99"], "no version, tag or commit '99'"),
        (["compose", "mascot=1e30", "-p", "<mascot>"], "between -10.0 and 10.0"),
        (["compose", "mascot", "-p", "<mascot>", "--size", "8"], "at least 32"),
        (["compose", "mascot", "-p", "a photo of <mascot> " * 800], "characters"),
        (["add", "newone", ".", "--prompt-template", "a photo of {token} by {artist}"], "only {token} in braces"),
        (["add", "newone", ".", "--prompt-template", "a photo of {token} }"], "only {token} in braces"),
        (["add", "newone", ".", "--resolution", "12"], "multiple of 8"),
        (["add", "newone", ".", "--rank", "1000"], "more than half the width"),
    ],
)
def test_impossible_arguments_are_usage_errors(store_copy, capsys, args, message):
    _refused(store_copy, capsys, args, 2, message)


def test_adding_an_existing_name_is_one_line_and_nothing_before_it(store_copy, photos, capsys):
    _refused(store_copy, capsys, ["add", "mascot", str(photos / "mascot")], 2, "already exists")
    assert main(["--store", str(store_copy), "add", "mascot", str(photos / "mascot")]) == 2
    assert capsys.readouterr().err.startswith("Error: ")  # no empty progress bar above it


# ---- the environment --------------------------------------------------------------------------


def test_unwritable_destinations_are_environment_errors(store_copy, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["init", str(blocker / "lib")]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("Error: ")
    _refused(store_copy, capsys, ["export", "mascot", "-o", str(blocker / "x.safetensors")], 4, "a-file")


def test_an_unreachable_object_store_is_an_environment_error(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    start = time.perf_counter()
    assert main(["--store", "s3://bucket/lib", "status"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and "object store s3://bucket/lib" in err
    assert time.perf_counter() - start < 90


def test_init_then_cd_then_status_works(tmp_path, capsys, monkeypatch):
    (tmp_path / "existing").mkdir()  # an existing empty folder is fine too
    for folder in ("mylib", "existing"):
        assert main(["init", str(tmp_path / folder)]) == 0
        assert (tmp_path / folder / ".seqlib" / "store.json").is_file()
        monkeypatch.chdir(tmp_path / folder)
        assert main(["status", "--json"]) == 0
    assert main(["init", str(tmp_path / "mylib")]) == 3  # never over an existing library
    capsys.readouterr()


def test_debug_shows_the_traceback(store_copy, capsys, monkeypatch):
    assert main(["--store", str(store_copy), "--debug", "show", "nosuch"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("SEQLIB_DEBUG", "1")
    assert main(["--store", str(store_copy), "show", "nosuch"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_says_so_and_exits_70(store_copy, capsys, monkeypatch):
    from seqlib.glance import Reading  # what both readers answer `status` with

    monkeypatch.setattr(Reading, "status", lambda self: 1 / 0)
    assert main(["--store", str(store_copy), "status"]) == 70
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err and "this is a bug" in err
