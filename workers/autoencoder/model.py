"""The convolutional autoencoder whose bottleneck is an image's fingerprint.

The seed recipe: 128x128x3 input, four stride-2 conv stages, a linear bottleneck of ``dim``
(256) features, a mirrored decoder, trained with MSE and Adam at 1e-3 on the collection itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class AutoencoderConfig:
    arch: str = "conv_ae"
    image_size: int = 128  # square input side; a multiple of 2 ** len(widths)
    in_channels: int = 3
    dim: int = 256  # bottleneck width = embedding width (CBIR_EMBEDDING_DIM)
    widths: tuple[int, ...] = (32, 64, 128, 256)

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        stride = 2 ** len(self.widths)
        if self.image_size % stride:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {stride}")

    @property
    def feature_side(self) -> int:
        return self.image_size // 2 ** len(self.widths)

    def to_dict(self) -> dict:
        return asdict(self)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ConvAutoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        side = config.feature_side
        self.encoder_convs = nn.Sequential(
            *[_down(cin, cout) for cin, cout in zip((config.in_channels, *widths[:-1]), widths)]
        )
        self.bottleneck = nn.Linear(widths[-1] * side * side, config.dim)
        self.expand = nn.Linear(config.dim, widths[-1] * side * side)
        reversed_widths = widths[::-1]
        self.decoder_convs = nn.Sequential(*[_up(cin, cout) for cin, cout in zip(reversed_widths, reversed_widths[1:])])
        self.to_pixels = nn.ConvTranspose2d(widths[0], config.in_channels, 4, stride=2, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, S, S) in [0, 1]
        h = self.encoder_convs(x)  # (B, widths[-1], S/16, S/16)
        return self.bottleneck(h.flatten(1))  # (B, dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        side = self.config.feature_side
        h = self.expand(z).view(-1, self.config.widths[-1], side, side)  # (B, widths[-1], S/16, S/16)
        h = self.decoder_convs(h)  # (B, widths[0], S/2, S/2)
        return torch.sigmoid(self.to_pixels(h))  # (B, C, S, S)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


ARCHITECTURES = {"conv_ae": ConvAutoencoder}


def build_model(config: AutoencoderConfig) -> nn.Module:
    return ARCHITECTURES[config.arch](config)


def save_checkpoint(path, *, model: nn.Module, config: AutoencoderConfig, extra: dict | None = None) -> None:
    """The config travels with the weights, so ``load_checkpoint`` needs nothing but the file."""
    torch.save({"config": config.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}}, path)


def load_checkpoint(path, *, map_location="cpu") -> tuple[nn.Module, AutoencoderConfig]:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    config = AutoencoderConfig(**payload["config"])
    model = build_model(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, config
