"""Pretrained bases: the embedded default, a diffusers folder, a hub id, a single-file checkpoint.

A base is identified by a fingerprint of the weights seqlib adapts; every concept was
trained against exactly those weights, so loading anything else is refused.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from seqlib.embedded import EMBEDDED_BASE_ID, EMBEDDED_BASES, RESOLUTION
from seqlib.errors import BaseLoadError, BaseMismatchError, DeviceError, UsageError
from seqlib.format import BaseRecord, LayerRecord, LibraryConfig

EMBEDDED_DIRNAME = "base"


def _quiet() -> None:
    # Library chatter (progress bars per component, torchvision notices) is noise to a user.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="diffusers")
    warnings.filterwarnings("ignore", module="transformers")


def pick_device(name: str) -> str:
    """``auto``: CUDA, else Apple's MPS, else the CPU; a named device must exist."""
    import torch

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise UsageError(f"--device {name}: use auto, cpu, cuda, cuda:N or mps")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if name.startswith("cuda") and not cuda:
        raise DeviceError(f"--device {name}: no CUDA GPU is visible (install a CUDA build of torch; see README)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices are visible")
    if name == "mps" and not mps:
        raise DeviceError("--device mps: Apple's Metal backend is not available here")
    return name


def classify(spec: str | None, config: str | None) -> tuple[str, str]:
    """(kind, source) for what the user passed to ``--base``."""
    if spec is None or spec == "embedded":
        return "embedded", EMBEDDED_BASE_ID
    if spec.startswith("embedded:"):
        name = spec.removeprefix("embedded:")
        if name not in EMBEDDED_BASES:
            raise UsageError(
                f"--base {spec}: the embedded bases are {', '.join(f'embedded:{n}' for n in EMBEDDED_BASES)}"
            )
        return "embedded", EMBEDDED_BASES[name][0]
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BaseLoadError(f"{spec} is a folder but not a diffusers pipeline (no model_index.json)")
        return "diffusers", str(path.resolve())
    if path.is_file():
        if path.suffix != ".safetensors":
            raise BaseLoadError(
                f"{spec}: only .safetensors single-file checkpoints are accepted "
                "(.ckpt files are pickles and can run code when loaded)"
            )
        if config is None:
            raise BaseLoadError(
                "a single-file checkpoint needs --base-config DIR: a diffusers folder with the "
                "model's config files (e.g. a copy of stable-diffusion-v1-5's, weights not needed)"
            )
        return "single_file", str(path.resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise BaseLoadError(f"{spec} is neither an existing folder/file nor a hub id like `org/model`")
    return "hub", spec


def load_pipeline(kind: str, source: str, config: str | None, embedded_dir: Path | None, device: str = "cpu"):
    """Load a StableDiffusionPipeline from a base description; clear errors, no downloads offline.

    ``embedded_dir`` is the local folder of an embedded base (the store's ``base/``)."""
    _quiet()
    import torch
    from diffusers import StableDiffusionPipeline

    # fp32 whatever the files hold: the embedded lab base ships fp16 (half the bytes), and
    # transformers would otherwise keep its text encoder in fp16 on the CPU
    common = dict(safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32)
    try:
        if kind == "embedded":
            assert embedded_dir is not None
            if not (Path(embedded_dir) / "model_index.json").is_file():
                shipped = next((path for base_id, path in EMBEDDED_BASES.values() if base_id == source), None)
                copy = f"; the package ships it: `cp -r {shipped} {embedded_dir}`" if shipped else ""
                raise BaseLoadError(
                    f"{embedded_dir} (the library's copy of its embedded base {source}) is missing or incomplete; "
                    f"restore it from a backup{copy}"
                )
            pipe = StableDiffusionPipeline.from_pretrained(embedded_dir, **common)
        elif kind == "diffusers":
            pipe = StableDiffusionPipeline.from_pretrained(source, **common)
        elif kind == "single_file":
            pipe = StableDiffusionPipeline.from_single_file(source, config=config, **common)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(source, **common)
    except (OSError, ValueError) as e:
        hint = ""
        if kind == "hub":
            hint = " (is the machine offline? download it once with network, or pass a local folder)"
        raise BaseLoadError(f"could not load base {source}{hint}: {str(e).splitlines()[0]}") from None
    # transformers falls back to a 2-token vocabulary when a tokenizer folder is missing.
    if len(pipe.tokenizer) < 100:
        raise BaseLoadError(f"base {source}: its tokenizer did not load (vocabulary of {len(pipe.tokenizer)})")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(pick_device(device))


def describe(
    pipe, kind: str, source: str, config: str | None, layer_set: str = "attention"
) -> tuple[BaseRecord, list[LayerRecord]]:
    from seqlib.lora import adapted_layers, fingerprint

    layers = adapted_layers(pipe.unet, layer_set)
    if not layers:
        raise BaseLoadError(f"base {source} has no {layer_set} layers to adapt")
    resolution = RESOLUTION if kind == "embedded" else pipe.unet.config.sample_size * pipe.vae_scale_factor
    record = BaseRecord(kind=kind, source=source, config=config, fingerprint=fingerprint(layers), resolution=resolution)
    return record, [LayerRecord(name=n, in_features=m.in_features, out_features=m.out_features) for n, m in layers]


def write_embedded(folder: Path, source: str = EMBEDDED_BASE_ID) -> None:
    """Copy the pretrained embedded base ``source`` (a base id) that ships in the package into
    ``folder/base``."""
    import shutil

    name, shipped = next((n, path) for n, (base_id, path) in EMBEDDED_BASES.items() if base_id == source)
    if not (shipped / "model_index.json").is_file():
        hint = "reinstall seqlib"
        if name == "lab":
            hint = (
                "its weights do not ship yet: pretrain them with `python scripts/pretrain_world.py --preset lab "
                "--out build/lab-base` and pass `--base build/lab-base/pipeline`"
            )
        raise BaseLoadError(f"the embedded base embedded:{name} is missing from this installation ({shipped}); {hint}")
    shutil.copytree(shipped, folder / EMBEDDED_DIRNAME, ignore=shutil.ignore_patterns("recipe.json", "*.png", "*.txt"))


def load_base(library: LibraryConfig, embedded_dir: Path | None, device: str = "cpu", override: str | None = None):
    """Load the library's base and check it is the one the concepts were trained on."""
    base = library.base
    kind, source, config = base.kind, base.source, base.config
    if override is not None:
        kind, source = classify(override, config)
    pipe = load_pipeline(kind, source, config, embedded_dir, device)
    from seqlib.lora import fingerprint, named_layers

    try:
        got = fingerprint(named_layers(pipe.unet, library.layer_names))
    except KeyError as e:
        raise BaseMismatchError(
            f"base {source} has no layer {e.args[0]}; it is not the base this library was built on"
        ) from None
    if got != base.fingerprint:
        raise BaseMismatchError(
            f"base {source} is not the base this library was built on (fingerprint {got[:12]}, "
            f"library {base.fingerprint[:12]}); concepts trained on one base do not transfer"
        )
    return pipe


def load_text_side(library: LibraryConfig, embedded_dir: Path | None, device: str = "cpu"):
    """(tokenizer, text encoder) of the library's base. From a folder (embedded, diffusers) only
    those two load, not the UNet's gigabytes; other kinds load the whole pipeline."""
    kind, source = library.base.kind, library.base.source
    folder = embedded_dir if kind == "embedded" else Path(source) if kind == "diffusers" else None
    if folder is None:
        pipe = load_base(library, embedded_dir, device)
        return pipe.tokenizer, pipe.text_encoder
    _quiet()
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise BaseLoadError(f"could not load the text encoder of base {source}: {str(e).splitlines()[0]}") from None
    return tokenizer, text_encoder.to(pick_device(device))


def place_embedded(store, source: str) -> None:
    """Put the shipped embedded base ``source`` into a new store's ``base/`` (uploaded once for
    an object store, whose copies every machine downloads on first use)."""
    import tempfile

    if store.is_local:
        write_embedded(Path(store.root), source)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_embedded(Path(tmp), source)
        store.upload_base(Path(tmp) / "base")
