"""The command line as a user drives it: exit codes, one-line errors, files written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqlib.cli import main


def run(store: Path, *args: str, capsys) -> tuple[int, str, str]:
    code = main(["--store", str(store), *args])
    out, err = capsys.readouterr()
    return code, out, err


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_help_teaches_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("init", "add", "compose", "status", "log"):
        assert command in out
    for command, words in [("add", ["α", "β", "S_B", "S_A", "--hvp", "--context"]), ("compose", ["--seed", "weights"])]:
        assert main([command, "--help"]) == 0
        help_text = capsys.readouterr().out
        assert all(w in help_text for w in words)


def test_status_numbers_follow_the_capacity_arithmetic(seqlora_store, capsys):
    code, out, _ = run(seqlora_store, "status", "--json", capsys=capsys)
    assert code == 0
    status = json.loads(out)
    assert [c["name"] for c in status["concepts"]] == ["mascot", "emblem", "robot"]
    widths = {w["in_features"]: w for w in status["widths"]}
    r, used = status["rank"], 3 * status["rank"]
    for m, w in widths.items():
        assert (w["capacity"], w["used"], w["free"]) == (m // r, used, m - used)
    assert status["fits"] == (min(widths) - used) // r
    assert status["bottleneck"]["free"] == min(widths) - used
    code, out, _ = run(seqlora_store, "status", capsys=capsys)
    assert code == 0 and "bottleneck" in out and f"{status['fits']} more rank-4 concepts fit" in out


def test_log_lists_one_entry_per_change_newest_first(seqlora_store, capsys):
    code, out, _ = run(seqlora_store, "log", "--json", capsys=capsys)
    entries = json.loads(out)
    assert code == 0
    assert [e["message"] for e in entries][:3] == ["add robot", "add emblem", "add mascot"]
    assert entries[-1]["message"].startswith("init")


def test_compose_is_deterministic_for_a_seed(seqlora_store, tmp_path, capsys):
    prompt = "a photo of <mascot> and <emblem>"
    images = []
    for k, seed in enumerate(["0", "0", "1"]):
        code, out, err = run(
            seqlora_store,
            "compose",
            "mascot,emblem=0.8",
            "-p",
            prompt,
            "--seed",
            seed,
            "--steps",
            "4",
            "-o",
            str(tmp_path / str(k)),
            capsys=capsys,
        )
        assert code == 0, err
        (png,) = (tmp_path / str(k)).glob("*.png")
        images.append(np.asarray(Image.open(png)))
    assert images[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0].astype(int) - images[2]).max() > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compose", "nosuch", "-p", "a <nosuch>"], "no concept named 'nosuch'"),
        (["compose", ",", "-p", "a photo"], "no concepts selected"),
        (["compose", "mascot", "-p", "a photo of a dog"], "mentions none of the selected"),
        (["compose", "mascot", "-p", "<mascot> and <robot>"], "does not include it"),
        (["compose", "mascot,robot", "--layout", "row", "-p", "<mascot> and <robot>"], "one prompt per concept"),
        (["compose", "mascot,robot", "--layout", "row", "-p", "<robot> | <mascot>"], "tile 1 is <mascot>'s"),
        (["add", "mascot", "."], "already exists"),
        (["add", "Bad Name", "."], "must start with a lower-case letter"),
        (["add", "newone", "/nonexistent/photos"], "does not exist"),
    ],
)
def test_user_errors_exit_non_zero_with_one_line(seqlora_store, capsys, args, message):
    code, out, err = run(seqlora_store, *args, capsys=capsys)
    assert code != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last  # click usage errors add a usage line above
    assert "Traceback" not in err


def test_no_library_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 3
    assert "seqlib init" in capsys.readouterr().err


def test_add_with_an_empty_folder_is_refused(store_copy, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(store_copy, "add", "newone", str(tmp_path / "empty"), capsys=capsys)
    assert code == 3 and "no images" in err


def test_a_failed_add_leaves_the_store_exactly_as_it_was(store_copy, photos, capsys, monkeypatch):
    import seqlib.train

    before = tree_digest(store_copy)
    calls = {"n": 0}
    original = seqlib.train.bilevel_iteration

    def crash_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash mid-training")
        return original(*args, **kwargs)

    monkeypatch.setattr(seqlib.train, "bilevel_iteration", crash_midway)
    assert main(["--store", str(store_copy), "add", "newone", str(photos / "robot"), "--steps", "3"]) == 70
    err = capsys.readouterr().err  # an unexpected exception is a bug: its traceback, and it says so
    assert "simulated crash mid-training" in err and "this is a bug" in err
    assert calls["n"] == 3
    assert tree_digest(store_copy) == before

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(seqlib.train, "bilevel_iteration", interrupt)
    assert main(["--store", str(store_copy), "add", "newone", str(photos / "robot"), "--steps", "3"]) == 130
    assert "library is unchanged" in capsys.readouterr().err
    assert tree_digest(store_copy) == before


def test_diverging_training_stops_with_advice_and_commits_nothing(store_copy, photos, capsys):
    before = tree_digest(store_copy)
    code, _, err = run(
        store_copy,
        "add",
        "newone",
        str(photos / "robot"),
        "--steps",
        "2",
        "--alpha",
        "1e30",
        "--beta",
        "1e30",
        "--max-grad-norm",
        "0",
        capsys=capsys,
    )
    assert code == 3 and "diverged" in err
    assert "--alpha 0.001 --beta 0.001" in err  # a value that trains with Adam, not 1e30 / 3
    assert tree_digest(store_copy) == before


def test_read_only_commands_do_not_import_torch(seqlora_store):
    code = (
        "import sys; from seqlib.cli import main; "
        f"assert main(['--store', {str(seqlora_store)!r}, 'status']) == 0; "
        f"assert main(['--store', {str(seqlora_store)!r}, 'log']) == 0; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'zarr') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


READS = (["list"], ["log"], ["status"], ["show", "emblem"])


def test_read_commands_print_without_rich(seqlora_store):
    # plain lines and aligned columns: rich's import and tables were half of `status` (RESULTS)
    code = (
        "import sys; from seqlib.cli import main; "
        + "".join(f"assert main(['--store', {str(seqlora_store)!r}, *{c!r}]) == 0; " for c in READS)
        + "assert 'rich' not in sys.modules, 'rich imported'; "
        f"assert main(['--store', {str(seqlora_store)!r}, 'verify', '--skip-base']) == 0; "
        "assert 'rich' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "<mascot>" in result.stdout and "version 1" in result.stdout


def test_store_is_found_in_a_parent_folder(seqlora_store, tmp_path, monkeypatch, capsys):
    import shutil

    shutil.copytree(seqlora_store, tmp_path / ".seqlib")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    assert main(["log"]) == 0
    assert "add robot" in capsys.readouterr().out


def test_every_hyper_parameter_is_declared_once_and_bounded_alike_in_the_cli_and_the_api():
    from dataclasses import fields

    import click

    from seqlib.cli import add_command
    from seqlib.config import TrainConfig
    from seqlib.errors import UsageError
    from seqlib.format import TrainingRecord

    declared = {f.name for f in fields(TrainConfig) if "help" in f.metadata}
    assert declared | {"method", "init_word"} == {f.name for f in fields(TrainConfig)}  # those two have own options
    assert declared <= {p.name for p in add_command.params}
    assert set(TrainingRecord.model_fields) - {"eps"} == {f.name for f in fields(TrainConfig)}  # the record mirrors it
    for field, bad in [("K", 0), ("alpha", -1e-3), ("max_grad_norm", -1.0), ("seed", -1), ("resolution", 4)]:
        with pytest.raises(UsageError, match=f"`{field}` must be"):
            TrainConfig(**{field: bad})
        flag = next(
            f.metadata["flag"] or "--" + f.name.replace("_", "-") for f in fields(TrainConfig) if f.name == field
        )
        with pytest.raises(click.BadParameter):
            add_command.make_context("add", ["x", ".", flag, str(bad)])
