"""The embedded default base: a tiny Stable-Diffusion-architecture pipeline, pretrained offline.

Same diffusers/transformers classes and the same adapted-layer names as SD1.5
(``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` ...), at a size that
trains and samples in seconds on a CPU. ``build_embedded_pipeline`` writes the architecture
with seeded random weights; ``scripts/pretrain_world.py`` trains it on the procedural world
(``seqlib.world``) and its output ships as ``assets/base`` — the default base of
``seqlib init`` — with ``recipe.json`` (script settings, seed, losses) beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqlib.config import LAB_BASE_ID, TINY_BASE_ID
from seqlib.world import VOCABULARY

# Bumped whenever the architecture or seed changes: part of the base identity (both ids live in
# the torch-free config, which derives the default layer set from them).
EMBEDDED_BASE_ID = TINY_BASE_ID

EMBEDDED_SEED = 0  # of the random initialisation pretraining starts from
SHIPPED_BASE = Path(__file__).parent / "assets" / "base"
SHIPPED_LAB_BASE = Path(__file__).parent / "assets" / "lab"
# `seqlib init --base embedded[:tiny]` / `--base embedded:lab`: name -> (base id, shipped folder)
EMBEDDED_BASES = {"tiny": (EMBEDDED_BASE_ID, SHIPPED_BASE), "lab": (LAB_BASE_ID, SHIPPED_LAB_BASE)}
RESOLUTION = 64  # pixels
# The VAE downsamples by 4 (SD1.5's by 8): at 64 px an 8x8 latent cannot hold a mascot's eyes
# (measured: reconstructions of the example concepts lost them), a 16x16 one can.
VAE_FACTOR = 4

# Words the embedded tokenizer knows as whole tokens; anything else is spelled
# out in single characters, which CLIP's byte-level BPE always covers.
_WORDS = (
    "a an the of and with on in at to photo picture painting drawing image style "
    "dog cat mug cup toy person man woman car house tree flower bird beach forest "
    "city table room sky water mountain red green blue yellow black white small big "
    "cute old new wearing sitting standing next near front top portrait close up"
).split()
_TINY_WORDS = list(dict.fromkeys([*_WORDS, *VOCABULARY]))  # the procedural world's words are whole tokens too


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable-unicode map (same as GPT-2's).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _lab_words() -> list[str]:
    from seqlib.world_lab import VOCABULARY as LAB_VOCABULARY

    return list(dict.fromkeys([*_TINY_WORDS, *LAB_VOCABULARY]))


def build_vocab(words: list[str] | None = None) -> tuple[dict[str, int], list[str]]:
    """A CLIP BPE vocabulary: every byte (with and without the ``</w>`` word end),
    plus merge chains that turn each of ``words`` (default: the tiny base's) into one token."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    # Longest words first: BPE applies the lowest-ranked merge, so their chains win.
    for word in sorted(words or _TINY_WORDS, key=len, reverse=True):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left = left + right
            if left not in tokens:
                tokens.append(left)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(folder: Path, words: list[str] | None = None) -> None:
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(folder)


def _text_encoder(tokenizer, width: int, layers: int):
    """A CLIP text encoder of ``layers`` layers ``width`` wide, 4 heads; MLP 2x wide below 256
    (the tiny base's), 4x from 256 (CLIP's)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=width * (2 if width < 256 else 4),
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _save(folder: Path, vae, text_encoder, tokenizer, unet, scheduler) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def build_embedded_pipeline(folder: Path) -> None:
    """Write the untrained embedded architecture as a diffusers pipeline folder (about 18 MB)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTokenizer

    folder = Path(folder)
    write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")

    torch.manual_seed(EMBEDDED_SEED)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // VAE_FACTOR,
        # Convolutions only at 16x16, attention (the adapted layers) from 8x8 down: self-attention
        # over 256 tokens would triple the cost of every training step on a CPU.
        block_out_channels=(64, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=RESOLUTION,
    )
    text_encoder = _text_encoder(tokenizer, width=128, layers=2)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    _save(folder, vae, text_encoder, tokenizer, unet, scheduler)


def build_lab_pipeline(folder: Path) -> None:
    """Write the untrained lab architecture (``embedded:lab``) as a diffusers pipeline folder.

    SD1.5's proportions where the method's claim depends on them: every adapted attention layer
    is at least 256 wide (64 concepts at r=4; SD1.5's narrowest: 320, 80 concepts), self- and
    cross-attention run at the finest latent resolution (16x16, as SD1.5's at 64x64), a 4-layer
    256-wide text encoder feeds the cross-attention keys and values, and the lowest resolution
    has no attention (as SD1.5's 8x8). The VAE is the tiny base's, already trained (same latents:
    16x16x4 for 64 px), so pretraining starts at the UNet stage.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    folder = Path(folder)
    write_tokenizer(folder / "tokenizer", _lab_words())
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    torch.manual_seed(EMBEDDED_SEED)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // VAE_FACTOR,
        block_out_channels=(256, 256),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=256,
        attention_head_dim=32,  # 8 heads of 32, as SD1.5's 8 heads
        norm_num_groups=32,
    )
    text_encoder = _text_encoder(tokenizer, width=256, layers=4)
    vae = AutoencoderKL.from_pretrained(SHIPPED_BASE / "vae")
    scheduler = DDIMScheduler.from_pretrained(SHIPPED_BASE / "scheduler")
    _save(folder, vae, text_encoder, tokenizer, unet, scheduler)
