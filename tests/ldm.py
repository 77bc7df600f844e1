"""Test helper: write a diffusers SD pipeline as an original (LDM) single-file checkpoint.

The inverse of diffusers' ``convert_ldm_*_checkpoint`` for SD1.x-shaped pipelines, so the
single-file base path is tested on a real single-file layout at small size.
"""

from __future__ import annotations

import re

from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _rename(rest: str, pairs) -> str:
    head, _, leaf = rest.rpartition(".")
    for new, old in pairs:
        if head == new:
            head = old
    return f"{head}.{leaf}"


def unet_to_ldm(state: dict, layers_per_block: int, up_has_attention: list[bool]) -> dict:
    per = layers_per_block + 1
    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + b * per + j}.0.{_rename(rest, _RESNET)}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            new = f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{_rename(m[3], _RESNET)}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            new = f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b = int(m[1])
            new = f"output_blocks.{b * per + layers_per_block}.{2 if up_has_attention[b] else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out[new] = value
    return out


def vae_to_ldm(state: dict, num_blocks: int) -> dict:
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            b = num_blocks - 1 - int(m[1])
            new = f"decoder.up.{b}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            new = f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN)}"
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out[new] = value
    return out


def pipeline_to_ldm(pipe) -> dict:
    """The whole pipeline as one LDM-layout state dict (UNet, VAE, CLIP text encoder)."""
    unet_cfg = pipe.unet.config
    up_attn = ["CrossAttn" in t for t in unet_cfg.up_block_types]
    sd = {
        f"model.diffusion_model.{k}": v
        for k, v in unet_to_ldm(pipe.unet.state_dict(), unet_cfg.layers_per_block, up_attn).items()
    }
    sd |= {
        f"first_stage_model.{k}": v
        for k, v in vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.down_block_types)).items()
    }
    for k, v in pipe.text_encoder.state_dict().items():
        k = k if k.startswith("text_model.") else f"text_model.{k}"
        sd[f"cond_stage_model.transformer.{k}"] = v
    return {k: v.contiguous() for k, v in sd.items()}
