"""The adversarial term of the VAE decoder's loss: a patch discriminator trained
beside it, as in the loss SD's own autoencoder was trained with (Esser et al. 2021,
"Taming Transformers"; Rombach et al. 2022, appendix G).

MSE and L1 reward the average of the details that could be there, which is blur;
a discriminator that scores small patches as real or reconstructed rewards texture
that looks like the training images' own (film grain, trabecular detail, sharp
edges). The weight of the adversarial term is set each step from the gradients at
the decoder's last layer, so that it pulls as hard as the reconstruction loss times
``adversarial_weight`` whatever the two losses' scales are.

An optional feature-matching term (Wang et al. 2018, "pix2pixHD") compares the
discriminator's intermediate features of the real crop and of its reconstruction:
a perceptual loss from a network trained here, on the same images, since the usual
one (LPIPS on ImageNet VGG weights) cannot be downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: strided 4×4 convolutions down to one logit per patch.

    ``layers`` strided stages after the first; each logit sees a 70×70 patch at
    ``layers=3``, 34×34 at ``layers=2`` (the size that suits 64² crops).
    """

    def __init__(self, channels: int = 3, width: int = 32, layers: int = 2) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(channels, width, 4, stride=2, padding=1),
                nn.LeakyReLU(0.2),
            )
        ]
        inner = width
        for index in range(1, layers + 1):
            outer = width * min(2**index, 8)
            stride = 2 if index < layers else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(inner, outer, 4, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(outer),
                    nn.LeakyReLU(0.2),
                )
            )
            inner = outer
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(inner, 1, 4, stride=1, padding=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-patch logits, and every block's features (for feature matching)."""
        features = []
        hidden = images
        for block in self.blocks:
            hidden = block(hidden)
            features.append(hidden)
        return self.head(hidden), features


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The hinge loss: push real logits above 1 and reconstructed ones below -1."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """The decoder's adversarial loss: raise the logits of its reconstructions."""
    return -fake.mean()


def feature_matching_loss(
    real: list[torch.Tensor], fake: list[torch.Tensor]
) -> torch.Tensor:
    """Mean L1 between the discriminator's features of real and reconstructed
    crops, one term per block; the real side is a fixed target."""
    return sum(F.l1_loss(f, r.detach()) for r, f in zip(real, fake, strict=True)) / len(
        real
    )


def adaptive_weight(
    reconstruction: torch.Tensor,
    adversarial: torch.Tensor,
    last_layer: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``scale`` × |∇ reconstruction| / |∇ adversarial| at ``last_layer``, clamped
    to [0, 1e4] and detached: Taming Transformers' balance of the two terms."""
    reconstruction_grad = torch.autograd.grad(
        reconstruction, last_layer, retain_graph=True
    )[0]
    adversarial_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[
        0
    ]
    ratio = reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    return (ratio.clamp(0.0, 1e4) * scale).detach()
