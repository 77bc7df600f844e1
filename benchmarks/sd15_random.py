"""An SD1.5-architecture diffusers folder with seeded random weights and SD1.5's real tokenizer.

No model hub is reachable, so SD1.5-size benchmarks run on its exact architecture (UNet 860M,
CLIP ViT-L/14 text encoder, the VAE, PNDM scheduler config) with random weights. The tokenizer
is CLIP's own vocabulary, rebuilt offline from the BPE merges file inside the
``open-clip-torch`` wheel (``pip download open-clip-torch --no-deps``), so prompts tokenize as
on the real model ("a photo of a cat" -> 49406 320 1125 539 320 2368 49407).

    python benchmarks/sd15_random.py build/sd15-random [--wheel open_clip_torch-*.whl]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file

SCHEDULER = dict(  # SD1.5's scheduler_config.json
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def _open_clip_wheel(wheel: Path | None) -> Path:
    if wheel is not None:
        return wheel
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "open-clip-torch", "--no-deps", "-q", "-d", str(tmp)], check=True
    )
    return next(tmp.glob("open_clip_torch-*.whl"))


def write_tokenizer(folder: Path, wheel: Path | None = None) -> None:
    """CLIP's vocab.json and merges.txt, as transformers' CLIPTokenizer reads them."""
    from seqlib.embedded import _bytes_to_unicode

    with zipfile.ZipFile(_open_clip_wheel(wheel)) as z:
        lines = gzip.open(io.BytesIO(z.read(BPE_IN_WHEEL))).read().decode("utf-8").split("\n")
    merges = lines[1 : MERGES + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    end = "<|endoftext|>"
    config = dict(model_max_length=77, bos_token="<|startoftext|>", eos_token=end, pad_token=end)
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "CLIPTokenizer"}))


def build(out: Path, wheel: Path | None = None, seed: int = 0) -> Path:
    """Write the pipeline to ``out`` (skipped when it is already there); returns ``out``."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from trainer import SD15_UNET

    if (out / "model_index.json").is_file():
        return out
    write_tokenizer(out / "tokenizer", wheel)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    got = tokenizer("a photo of a cat").input_ids
    assert got == [49406, 320, 1125, 539, 320, 2368, 49407], got
    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    unet = UNet2DConditionModel(**SD15_UNET)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--wheel", type=Path, help="a downloaded open_clip_torch wheel (else pip downloads one)")
    args = parser.parse_args()
    print(build(args.out, args.wheel))
