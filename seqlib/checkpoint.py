"""Resumable training state of an unfinished ``add``, kept outside the store's history.

Local stores keep it in ``.seqlib/scratch/``; object stores in the local cache (it is one
machine's unfinished work). Tensors go to safetensors, the rest to JSON: nothing is pickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from seqlib.backends import atomic_write
from seqlib.errors import StoreDamagedError
from seqlib.format import sha256_hex
from seqlib.store import Store


def folder(store: Store) -> Path:
    if store.is_local:
        return Path(store.root) / "scratch"
    cache = Path(os.environ.get("SEQLIB_CACHE", Path.home() / ".cache" / "seqlib"))
    return cache / "resume" / sha256_hex(str(store.root).encode())[:16]


def save(store: Store, name: str, state: dict, meta: dict) -> None:
    from safetensors.torch import save as to_bytes

    tensors = {f"A.{i}": a.detach().cpu().contiguous() for i, a in enumerate(state["As"])}
    tensors |= {f"B.{i}": b.detach().cpu().contiguous() for i, b in enumerate(state["Bs"])}
    tensors["embedding"] = state["embedding"].detach().cpu().contiguous()
    tensors["rng"] = state["rng"].contiguous()
    tensors |= {f"optimizer.{k}": v.detach().cpu().contiguous() for k, v in state.get("optimizer", {}).items()}
    base = folder(store)
    atomic_write(base / f"{name}.safetensors", to_bytes(tensors))
    info = {"meta": meta, "initial": state["initial"], "losses": state["losses"], "layers": len(state["As"])}
    atomic_write(base / f"{name}.json", (json.dumps(info, sort_keys=True) + "\n").encode())


def load(store: Store, name: str) -> tuple[dict, dict] | None:
    from safetensors.torch import load_file

    base = folder(store)
    if not (base / f"{name}.json").is_file() or not (base / f"{name}.safetensors").is_file():
        return None
    try:
        info = json.loads((base / f"{name}.json").read_text())
        tensors = load_file(str(base / f"{name}.safetensors"))
        state = _state(info, tensors)
    except Exception as e:  # json, safetensors and key errors alike: the checkpoint is unusable
        raise StoreDamagedError(
            str(base / f"{name}.*"),
            f"checkpoint of the unfinished add of {name!r} unreadable: {e}",
            "run the add again without --resume to start over",
        ) from None
    return state, info["meta"]


def _state(info: dict, tensors: dict) -> dict:
    return {
        "As": [tensors[f"A.{i}"] for i in range(info["layers"])],
        "Bs": [tensors[f"B.{i}"] for i in range(info["layers"])],
        "embedding": tensors["embedding"],
        "rng": tensors["rng"].to(torch.uint8),
        "optimizer": {k.removeprefix("optimizer."): v for k, v in tensors.items() if k.startswith("optimizer.")},
        "initial": info["initial"],
        "losses": info["losses"],
    }


def clear(store: Store, name: str) -> None:
    for suffix in (".safetensors", ".json"):
        (folder(store) / f"{name}{suffix}").unlink(missing_ok=True)


def exists(store: Store, name: str) -> bool:
    return (folder(store) / f"{name}.json").is_file()
