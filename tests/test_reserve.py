"""The shared reserve (format 4): the directions every input shares, kept out of every basis."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from seqlib.api import Library
from seqlib.config import TrainConfig
from seqlib.errors import UsageError
from seqlib.format import LibraryConfig, ReserveRecord
from seqlib.payload import pack_reserve, unpack_reserve
from seqlib.reserve import directions_holding
from seqlib.train import Earlier, taken_space
from tests.conftest import FAST


def _rotated(eigenvalues: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ = V diag(λ) Vᵀ with a random orthogonal V; returns (Σ, V)."""
    g = torch.Generator().manual_seed(seed)
    V, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    return V @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ V.T, V


def test_directions_holding_takes_the_fewest_top_eigenvectors_that_reach_the_share():
    sigma, V = _rotated([4.0, 3.0, 2.0, 1.0, 0.0, 0.0])
    U, share = directions_holding(sigma, 0.5, 6)
    assert U.shape == (6, 2) and share == pytest.approx(0.7)  # 4/10 < 0.5 <= 7/10
    assert torch.allclose(U @ U.T, V[:, :2] @ V[:, :2].T, atol=1e-10)  # the span of the top two
    U, share = directions_holding(sigma, 0.4, 6)
    assert U.shape[1] == 1 and share == pytest.approx(0.4)  # exactly at the target is enough
    U, share = directions_holding(sigma, 0.95, 2)
    assert U.shape[1] == 2 and share == pytest.approx(0.7)  # capped
    assert directions_holding(torch.zeros(5, 5), 0.5, 3)[0].shape == (5, 0)
    assert directions_holding(sigma, 0.5, 0)[0].shape == (6, 0)


def _layers(widths):
    from seqlib.format import LayerRecord

    return [LayerRecord(name=f"l{i}", in_features=m, out_features=8) for i, m in enumerate(widths)]


def test_pack_and_unpack_keep_each_layers_own_number_of_directions():
    layers = _layers([6, 6, 4])
    rng = np.random.default_rng(0)
    U = {"l0": np.linalg.qr(rng.normal(size=(6, 3)))[0], "l1": np.linalg.qr(rng.normal(size=(6, 1)))[0]}
    U["l2"] = np.zeros((4, 0))
    arrays = pack_reserve(layers, U)
    assert arrays["R_m6"].shape == (2, 6, 3) and arrays["R_m4"].shape == (1, 4, 0)
    assert not arrays["R_m6"][1][:, 1:].any()  # zero-padded after its own directions
    record = ReserveRecord(
        payload="x", arrays=[], dims=[3, 1, 0], captured=[0.5, 0.5, 0.0], energy=0.5, max_fraction=0.5,
        inputs="test", created="2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    back = unpack_reserve(layers, record, arrays)
    for name in U:
        np.testing.assert_allclose(back[name], U[name], atol=1e-6)


def test_taken_space_avoids_the_reserve_without_charging_the_concept():
    g = torch.Generator().manual_seed(0)
    R = torch.linalg.qr(torch.randn(16, 3, generator=g, dtype=torch.float64))[0]
    B = torch.randn(16, 2, generator=g)
    Q, extra = taken_space("l", 16, [Earlier({}, {"l": B}, orthogonal=True)], 0, {"l": R})
    assert Q.shape == (16, 5) and extra == 0
    P = Q @ Q.T
    assert torch.allclose(P @ R, R, atol=1e-10) and torch.allclose(P @ B.double(), B.double(), atol=1e-6)


def test_a_library_without_a_reserve_encodes_as_version_3_did():
    lib = LibraryConfig.model_validate(
        {"base": {"kind": "embedded", "source": "x", "fingerprint": "f", "resolution": 64}, "rank": 4, "layers": []}
    )
    assert "reserve" not in lib.model_dump(mode="json")  # old commits re-encode to their exact bytes
    assert lib.reserved_dims == []


@pytest.fixture(scope="module")
def reserved_store(tmp_path_factory, empty_store, photos):
    """An empty library given a reserve, then one concept."""
    path = tmp_path_factory.mktemp("reserved") / ".seqlib"
    shutil.copytree(empty_store, path)
    lib = Library.open(path)
    lib.reserve(energy=0.5, count=8)
    lib.add("mascot", photos / "mascot", config=TrainConfig(seed=0, **FAST), preview=False)
    return path


def test_reserve_is_recorded_counted_and_kept_out_of_every_basis(reserved_store):
    lib = Library.open(reserved_store)
    head = lib.head()
    record = head.library.reserve
    assert record is not None and head.format_version == 4
    layers = head.library.layers
    assert len(record.dims) == len(layers)
    assert all(1 <= d <= layer.in_features // 16 for d, layer in zip(record.dims, layers))
    assert all(0 < c <= 1 for c in record.captured)
    R = lib.reserve_directions(head)
    B = lib.basis(head.concept("mascot"), head)
    for layer in layers:
        u = R[layer.name]
        assert torch.allclose(u.T @ u, torch.eye(u.shape[1], dtype=torch.float64), atol=1e-5)
        b = B[layer.name].double()
        cos = (b / b.norm(dim=0)).T @ u
        assert cos.abs().max() < 1e-4, layer.name
    # capacity: the reserve's dims are used on each layer
    s = lib.status()
    by_width = {}
    for layer, d in zip(layers, record.dims):
        by_width.setdefault(layer.in_features, []).append(d + 4)
    assert {g.in_features: g.used for g in s.groups} == {m: max(v) for m, v in by_width.items()}
    assert s.to_json()["reserve"]["dims"] == record.dims
    report = lib.verify(check_base=False)
    assert report["ok"], report["problems"]


def test_reserve_refused_twice_and_after_an_orthogonal_concept(reserved_store, seqlora_store, tmp_path):
    with pytest.raises(UsageError, match="already has a shared reserve"):
        Library.open(reserved_store).reserve(count=2)
    path = tmp_path / ".seqlib"
    shutil.copytree(seqlora_store, path)
    before = sorted(p.name for p in (path / "objects" / "commits").iterdir())
    with pytest.raises(UsageError, match="before the first orthogonal concept"):
        Library.open(path).reserve(count=2)
    assert sorted(p.name for p in (path / "objects" / "commits").iterdir()) == before


def test_verify_finds_a_basis_on_reserved_directions(seqlora_store, tmp_path):
    """A reserve forced onto a library whose concepts came first: their bases overlap it."""
    from seqlib import reserve as shared

    path = tmp_path / ".seqlib"
    shutil.copytree(seqlora_store, path)
    lib = Library.open(path)
    tip = lib.writable_tip()
    head = tip.version
    B = lib.basis(head.concepts[0], head)
    U = {n: np.linalg.qr(b.double().numpy())[0][:, :1] for n, b in B.items()}  # the first concept's own span
    payload_id, records = lib.store.write_payload(pack_reserve(head.library.layers, U), {"reserve": True})
    record = ReserveRecord(
        payload=payload_id, arrays=records, dims=[1] * len(U), captured=[0.1] * len(U), energy=0.5,
        max_fraction=0.0625, inputs="forged", created="2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    lib.commit_state(tip, "forged reserve", library=head.library.model_copy(update={"reserve": record}))
    problems = lib.verify(check_base=False)["problems"]
    assert any("basis uses reserved directions" in p and head.concepts[0].name in p for p in problems), problems
    assert shared.check_can_reserve  # the verb itself would have refused (test above)


def test_gc_keeps_the_reserve_and_the_cli_shows_it(reserved_store, tmp_path, capsys):
    from click.testing import CliRunner

    from seqlib.cli import cli, main

    path = tmp_path / ".seqlib"
    shutil.copytree(reserved_store, path)
    lib = Library.open(path)
    lib.gc(grace_seconds=0)
    assert lib.verify(check_base=False)["ok"]
    result = CliRunner().invoke(cli, ["--store", str(path), "status"])
    assert result.exit_code == 0 and "reserved" in result.output and "for no concept" in result.output
    result = CliRunner().invoke(cli, ["--store", str(path), "status", "--json"])
    assert json.loads(result.output)["reserve"]["energy"] == 0.5
    capsys.readouterr()
    assert main(["--store", str(path), "reserve"]) == 2
    err = capsys.readouterr().err
    assert "already has a shared reserve" in err and "Traceback" not in err


def test_init_with_reserve_records_it_before_any_concept(tmp_path, capsys):
    from seqlib.cli import main

    assert main(["init", str(tmp_path), "--reserve"]) == 0
    assert "reserved for no concept" in capsys.readouterr().out
    head = Library.open(tmp_path).head()
    assert head.library.reserve is not None and len(head.concepts) == 0
    assert [v.message.split(":")[0] for _, _, v in Library.open(tmp_path).log()] == ["reserve", "init"]
