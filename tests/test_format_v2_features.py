"""Format version 2 (issue 14): a real version-1 store still reads, verifies and grows; concept
identifiers, duplicate refusal, annotate, preferred weights, recipes, import --when-full."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open, save_file

from seqlib import Library
from seqlib.cli import main
from seqlib.embedded import SHIPPED_BASE
from seqlib.errors import CapacityError, ImportRejectedError, StoreDamagedError, UsageError
from seqlib.export import to_kohya
from seqlib.format_legacy import CommitV2
from seqlib.store import Store

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def v1_store(tmp_path) -> Path:
    """A library written by seqlib before format version 2 (tests/fixtures/v1-store: `mascot`
    trained, `foreign` imported from fixtures/v1-foreign.safetensors, tag v1-two), with the
    embedded base put back (the fixture leaves its 18 MB out)."""
    path = tmp_path / "lib" / ".seqlib"
    shutil.copytree(FIXTURES / "v1-store", path)
    shutil.copytree(SHIPPED_BASE, path / "base", ignore=shutil.ignore_patterns("recipe.json", "*.png", "*.txt"))
    return path


def file_tensor_sha256(path: Path) -> str:
    """The AutoV3 hash computed here from the file, independently of seqlib: sha256 of
    everything after the 8-byte length and the JSON header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


def lora_file(lib: Library, path: Path, seed: int, rank: int = 2) -> Path:
    g = torch.Generator().manual_seed(seed)
    layers = lib.head().library.layers
    factors = {
        x.name: (
            torch.randn(x.out_features, rank, generator=g) / 10,
            torch.randn(rank, x.in_features, generator=g) / 10,
        )
        for x in layers
    }
    save_file(to_kohya(factors), str(path))
    return path


def test_a_version_1_store_reads_verifies_and_keeps_its_commit_ids(v1_store, capsys):
    lib = Library.open(v1_store)
    head = lib.head()
    assert head.format_version == 1 and [c.name for c in head.concepts] == ["mascot", "foreign"]
    for _, commit_id in lib.store.entries():
        commit, raw = lib.store.read_commit_bytes(commit_id)
        assert commit.to_bytes() == raw  # re-encoded without the version-2 fields
    assert main(["--store", str(v1_store), "verify", "--skip-base"]) == 0
    capsys.readouterr()
    assert main(["--store", str(v1_store), "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    exported = lib.export("mascot", v1_store.parent / "mascot.safetensors")[0]
    assert rows["mascot"]["tensor_sha256"] == file_tensor_sha256(exported)  # computed: v1 records lack it


def test_a_version_1_commit_cannot_hold_version_2_fields(v1_store):
    store = Store(v1_store)
    raw = store.read_commit_bytes(store.tip()[1])[1]
    data = json.loads(raw)
    data["concepts"][0]["tensor_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="version-1 commit cannot hold tensor_sha256"):
        CommitV2.model_validate(data)
    data = json.loads(raw)
    data["format_version"] = 5
    key = "objects/commits/" + "f" * 64 + ".json"
    (v1_store / key).write_bytes(json.dumps(data).encode())
    with pytest.raises(Exception, match="format version 5; this seqlib reads versions 1, 2, 3 and 4"):
        store.read_version("f" * 64)
    (v1_store / key).write_bytes(b'{"format_version": 1, "concepts": 3}')
    with pytest.raises(StoreDamagedError):
        store.read_version("f" * 64)


def test_annotate_changes_only_notes_and_the_history_stays_valid(v1_store, capsys):
    lib = Library.open(v1_store)
    before = lib.head()
    identifier = lib.tensor_hash(before.concept("mascot"), before)
    args = ["--store", str(v1_store), "annotate", "mascot", "--description", "our mascot", "--trigger", "round"]
    assert main([*args, "--weight", "0.5", "--tags", "pets, demo"]) == 0
    after = lib.head()
    assert after.format_version == 4 and after.message == "annotate mascot"
    old, new = before.concept("mascot"), after.concept("mascot")
    assert new.notes.weight == 0.5 and new.notes.tags == ["pets", "demo"] and new.notes.trigger == "round"
    # same payload, arrays, all; the version-1 records get their identifier as they become format-4 objects
    assert new.model_dump(exclude={"notes", "tensor_sha256"}) == old.model_dump(exclude={"notes", "tensor_sha256"})
    assert old.tensor_sha256 is None and new.tensor_sha256 == identifier
    other = after.concepts[1]
    assert other.model_dump(exclude={"tensor_sha256"}) == before.concepts[1].model_dump(exclude={"tensor_sha256"})
    assert other.tensor_sha256 == lib.tensor_hash(before.concepts[1], before) and after.library == before.library
    assert lib.tensor_hash(new, after) == identifier
    assert main(["--store", str(v1_store), "verify", "--skip-base"]) == 0  # a v1 history, then a v2 commit
    capsys.readouterr()
    assert main(["--store", str(v1_store), "annotate", "mascot", "--weight", "0.5"]) == 2  # nothing changes
    assert "nothing to change" in capsys.readouterr().err
    assert len(lib.store.entries()) == 4
    assert main(["--store", str(v1_store), "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("<mascot>"))
    assert identifier[:10] in line and "weight 0.5" in line and "[pets, demo]" in line


def test_preferred_weight_is_compose_and_composed_exports_default_but_one_concept_exports_at_1(v1_store, tmp_path):
    lib = Library.open(v1_store)
    lib.annotate("mascot", weight=0.5, trigger="round")
    single = lib.export("mascot", tmp_path / "m.safetensors")[0]
    assert file_tensor_sha256(single) == lib.tensor_hash(lib.concept("mascot"))  # tensors at weight 1
    with safe_open(str(single), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.usage_hint"].startswith("<lora:m:0.5>") and "round" in meta["modelspec.trigger_phrase"]
    assert json.loads((tmp_path / "m.json").read_text())["preferred weight"] == 0.5
    pair = load_file(str(lib.export("mascot,foreign", tmp_path / "p.safetensors")[0]))
    explicit = load_file(str(lib.export("mascot=1,foreign", tmp_path / "q.safetensors")[0]))
    key = next(k for k in pair if k.endswith("lora_up.weight"))
    torch.testing.assert_close(pair[key][:, :4], 0.5 * explicit[key][:, :4])  # mascot's block baked at 0.5
    torch.testing.assert_close(pair[key][:, 4:], explicit[key][:, 4:])
    png = lib.compose("mascot", "a photo of <mascot>", out=tmp_path / "out", steps=2)[0]
    assert json.loads(Image.open(png).text["seqlib"])["concepts"] == {"mascot": 0.5}


def test_import_refuses_tensors_the_library_already_holds(v1_store, tmp_path):
    lib = Library.open(v1_store)
    with pytest.raises(ImportRejectedError, match="already in the library as concept 'foreign'"):
        lib.import_lora("again", FIXTURES / "v1-foreign.safetensors")  # a version-1 record: same file
    own = lib.export("mascot", tmp_path / "mascot.safetensors")[0]
    with pytest.raises(ImportRejectedError, match="as concept 'mascot'"):
        lib.import_lora("copy", own)  # a concept's own export
    new = lora_file(lib, tmp_path / "new.safetensors", seed=5)
    concept, _ = lib.import_lora("new", new)
    assert concept.imported.tensor_sha256 == file_tensor_sha256(new)
    assert concept.tensor_sha256 == lib.tensor_hash(concept.model_copy(update={"tensor_sha256": None}))
    resaved = tmp_path / "resaved.safetensors"
    save_file(load_file(str(new)), str(resaved), metadata={"ss_output_name": "renamed"})
    assert resaved.read_bytes() != new.read_bytes()
    with pytest.raises(ImportRejectedError, match="as concept 'new'"):
        lib.import_lora("renamed", resaved)  # metadata edits do not hide it
    tensors = load_file(str(new))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 1e-3
    nudged = tmp_path / "nudged.safetensors"
    save_file(tensors, str(nudged))
    with pytest.raises(ImportRejectedError, match="relative error 1.00"):
        lib.import_lora("nudged", nudged)  # not a duplicate by hash; its directions are simply taken
    lib.import_lora("nudged", nudged, force=True)  # different tensors: no false positive
    assert [c.name for c in lib.head().concepts][-2:] == ["new", "nudged"]


def test_import_when_full_skip_leaves_full_layers_out(tmp_path):
    Library.init(tmp_path / "wide", rank=32)  # 64-wide layers hold 2 concepts of rank 32
    lib = Library.open(tmp_path / "wide" / ".seqlib")
    for i in range(2):
        lib.import_lora(f"c{i}", lora_file(lib, tmp_path / f"c{i}.safetensors", seed=i, rank=32), force=True)
    third = lora_file(lib, tmp_path / "c2.safetensors", seed=2, rank=32)
    with pytest.raises(CapacityError):
        lib.import_lora("c2", third, force=True)
    with pytest.raises(CapacityError):
        lib.import_lora("c2", third, force=True, when_full="shrink")  # shrink never drops a layer
    warnings = []
    concept, errors = lib.import_lora("c2", third, force=True, when_full="skip", warn=warnings.append)
    layers = lib.head().library.layers
    assert concept.ranks == [0 if x.in_features == 64 else 32 for x in layers]
    assert warnings and "--when-full skip" in warnings[0]
    assert all(errors[x.name] == 1.0 for x in layers if x.in_features == 64)  # a skipped layer loses all
    report = lib.verify(check_base=False)
    assert not report["problems"], report["problems"]
    A, B, _ = lib.factors(concept, lib.head())
    skipped = next(x.name for x in layers if x.in_features == 64)
    assert float(np.abs(A[skipped].numpy()).max()) == 0.0


def test_a_recipe_replays_pixel_for_pixel_and_refuses_removed_concepts(v1_store, tmp_path, capsys):
    store = ["--store", str(v1_store)]
    settings = ["--prompt", "a photo of <mascot> and <foreign>", "--seed", "3", "--steps", "3", "--size", "64"]
    assert main([*store, "recipe", "save", "duo", "mascot=0.8,foreign", *settings]) == 0
    assert main([*store, "recipe", "save", "duo", "mascot", *settings]) == 2  # exists
    assert main([*store, "compose", "@duo", "-o", str(tmp_path / "a")]) == 0
    assert main([*store, "compose", "mascot=0.8,foreign", *settings, "-o", str(tmp_path / "b")]) == 0
    replay, direct = tmp_path / "a" / "@duo-seed3.png", tmp_path / "b" / "mascot+foreign-seed3.png"
    assert np.array_equal(np.asarray(Image.open(replay)), np.asarray(Image.open(direct)))
    text = Image.open(replay).text
    assert json.loads(text["seqlib"])["recipe"] == "duo" and "seqlib recipe: duo" in text["parameters"]
    capsys.readouterr()
    assert main([*store, "compose", "@duo", "--seed", "4"]) == 2
    assert "drop --seed" in capsys.readouterr().err
    assert main([*store, "recipe", "list"]) == 0
    assert "@duo" in capsys.readouterr().out
    assert main([*store, "rm", "foreign"]) == 0
    capsys.readouterr()
    assert main([*store, "compose", "@duo", "-o", str(tmp_path / "c")]) == 2
    assert "no longer in the library: foreign" in capsys.readouterr().err
    lib = Library.open(v1_store)
    with pytest.raises(UsageError, match="no recipe named 'nope'"):
        lib.recipe("nope")
    lib.revert("4")  # back to the version with both concepts: the recipe comes back with it
    assert lib.recipe("duo").concepts == [("mascot", 0.8), ("foreign", 1.0)]  # in the order given
    assert main([*store, "recipe", "rm", "duo"]) == 0
    assert lib.head().recipes == {} and main([*store, "verify", "--skip-base"]) == 0


def test_add_stores_a_preview_and_a_loss_curve_that_travel_with_the_concept(v1_store, photos, tmp_path, capsys):
    import base64
    import io

    from seqlib.config import TrainConfig

    lib = Library.open(v1_store)
    concept = lib.add("robot", photos / "robot", config=TrainConfig(steps=5, K=1, S_B=1, S_A=1))
    assert concept.preview and len(concept.loss_curve) == 5
    png = lib.store.read_preview(concept.preview)
    image = Image.open(io.BytesIO(png))
    assert max(image.size) <= 256 and "a photo of <robot>" in image.text["parameters"]
    again = lib.preview("robot", tmp_path / "again.png")  # re-rendered on demand: the same pixels
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(again))), np.asarray(image))
    assert main(["--store", str(v1_store), "show", "robot"]) == 0
    assert f"objects/previews/{concept.preview}.png" in capsys.readouterr().out
    exported = lib.export("robot", tmp_path / "robot.safetensors")[0]
    with safe_open(str(exported), "pt") as f:
        thumbnail = f.metadata()["modelspec.thumbnail"]
    assert base64.b64decode(thumbnail.removeprefix("data:image/png;base64,")) == png
    # an imported concept gets one on request, in a commit that changes nothing else
    assert lib.concept("foreign").preview is None
    assert main(["--store", str(v1_store), "preview", "foreign", "--save", "-o", str(tmp_path / "f.png")]) == 0
    after = lib.head()
    saved = hashlib.sha256((tmp_path / "f.png").read_bytes()).hexdigest()
    assert after.message == "preview foreign" and after.concept("foreign").preview == saved
    assert main(["--store", str(v1_store), "gc", "--grace", "0"]) == 0
    assert main(["--store", str(v1_store), "verify", "--skip-base"]) == 0  # previews kept by gc, checked
    (v1_store / "objects" / "previews" / f"{concept.preview}.png").write_bytes(png[:-10])
    capsys.readouterr()
    assert main(["--store", str(v1_store), "verify", "--skip-base", "--json"]) == 3
    assert any("concept robot: preview" in p for p in json.loads(capsys.readouterr().out)["problems"])


def test_report_is_one_self_contained_page_with_every_concept(v1_store, tmp_path):
    from seqlib.report import report_data

    lib = Library.open(v1_store)
    lib.annotate("mascot", description="our <b>mascot</b>", tags=["pets", "[x]"], trigger="round")
    lib.save_recipe("duo", "mascot,foreign", "a photo of <mascot> and <foreign>", steps=2)
    lib.compose("@duo", out=tmp_path / "out")
    lib.tag("annotated")
    data = report_data(lib)
    assert [c["name"] for c in data["concepts"]] == ["mascot", "foreign"]
    assert data["concepts"][0]["hash"] == lib.tensor_hash(lib.concept("mascot"))
    assert data["recipes"][0]["render"].startswith("data:image/png;base64,")  # compose @duo kept it
    assert data["history"][0]["tags"] == ["annotated"] and len(data["history"]) == 5
    assert data["matrix"] is not None and len(data["matrix"]) == 2
    page = lib.report(tmp_path / "report.html").read_text()
    assert "our &lt;b&gt;mascot&lt;/b&gt;" in page  # the user's words are escaped
    assert 'data-concept="mascot"' in page and 'data-concept="foreign"' in page and 'data-recipe="duo"' in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert 'class="bar bottleneck"' in page


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (.ci/run installs Debian's `chromium`)")
def test_the_report_renders_in_a_real_browser(v1_store, tmp_path):
    import subprocess

    lib = Library.open(v1_store)
    lib.annotate("mascot", tags=["pets"])
    page = lib.report(tmp_path / "report.html")
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for name in ("mascot", "foreign"):
        assert f'data-concept="{name}"' in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()], capture_output=True, timeout=120
    )
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (1400, 1200) and image.std() > 5  # drawn, not blank
