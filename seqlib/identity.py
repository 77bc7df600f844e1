"""An identity metric that needs no downloaded model: the offline stand-in for DINO.

A small CNN maps a 64×64 image to a unit vector. It is trained (``scripts/train_identity.py``)
to tell apart hundreds of procedurally generated identities from ``seqlib.heldout`` in
the ``"metric"`` namespace — disjoint from the benchmark's concepts — under changes of pose,
scale, position, background and blur, so that cosine similarity between a generated image
and a concept's reference photos measures identity the way the paper's DINO score does.
The trained weights ship in the package (``assets/identity.safetensors``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS = Path(__file__).parent / "assets" / "identity.safetensors"


class IdentityEncoder(nn.Module):
    def __init__(self, width: int = 32, dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, width * 2, width * 4, width * 4):
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1),
                nn.GroupNorm(8, out),
                nn.SiLU(),
                nn.Conv2d(out, out, 3, padding=1),
                nn.GroupNorm(8, out),
                nn.SiLU(),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, 3, 64, 64) in [-1, 1] -> (N, dim) unit vectors."""
        h = self.features(x).mean(dim=(2, 3))
        return F.normalize(self.head(h), dim=-1)


def to_tensor(images) -> Tensor:
    """PIL images (any size) -> (N, 3, 64, 64) in [-1, 1]."""
    from PIL import Image

    from seqlib.data import pil_to_tensor

    return torch.stack([pil_to_tensor(im.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)) for im in images])


def load_encoder(path: Path = WEIGHTS) -> IdentityEncoder:
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; train it with scripts/train_identity.py")
    encoder = IdentityEncoder()
    encoder.load_state_dict(load_file(path))
    return encoder.eval().requires_grad_(False)


def halves(x: Tensor) -> Tensor:
    """The left and right halves of each image, each padded back to a square with its own
    edge pixels: (N, 3, H, W) -> (2N, 3, H, W), for finding one concept among two."""
    w = x.shape[-1] // 2
    left = F.pad(x[..., :w], (w // 2, w - w // 2, 0, 0), mode="replicate")
    right = F.pad(x[..., w:], (w // 2, w - w // 2, 0, 0), mode="replicate")
    return torch.cat([left, right])


@torch.no_grad()
def embed(encoder: IdentityEncoder, x: Tensor) -> Tensor:
    return torch.cat([encoder(chunk) for chunk in x.split(256)])


def reference(encoder: IdentityEncoder, photos: Tensor) -> Tensor:
    """A concept's reference: the normalised mean embedding of its photos."""
    return F.normalize(embed(encoder, photos).mean(0), dim=0)


def identity_scores(encoder: IdentityEncoder, images: Tensor, references: Tensor) -> Tensor:
    """Cosine similarity of every image to every concept reference: (N, C)."""
    return embed(encoder, images) @ references.T


def found(encoder: IdentityEncoder, images: Tensor, references: Tensor, wanted: tuple[int, int]) -> Tensor:
    """Per image: are both concepts ``wanted`` present? Each half of the image is scored
    against every reference, and the pair counts as found when one half's best concept is
    ``wanted[0]`` and the other half's is ``wanted[1]``."""
    n = images.shape[0]
    best = identity_scores(encoder, halves(images), references).argmax(-1)
    left, right = best[:n], best[n:]
    a, b = wanted
    return ((left == a) & (right == b)) | ((left == b) & (right == a))
