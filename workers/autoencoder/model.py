"""The encoders that turn an image into its fingerprint, and their checkpoints.

Two architectures, both learned on the collection itself with no labels:
- ``patch_kmeans`` (the default, ``workers/autoencoder/patch_dictionary.py``): a dictionary of
  whitened colour patches learned with k-means, pooled on a 4x4 grid and by their maximum over
  the image, plus gradient and colour histograms,
  projected to ``dim`` by a PCA fitted on the collection and a whitening learned from its mutual
  nearest neighbours.
- ``conv_ae``, the seed recipe: 128x128x3 input, four stride-2 conv stages, a linear bottleneck of
  ``dim`` (256) features, a mirrored decoder, trained with MSE and Adam at 1e-3. Kept so that it
  can be compared.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


# What train_encoder, the admin and the demo train when no --arch is named: it retrieves better
# than the autoencoder on both shared sets and fits in seconds to a minute on a CPU
# (docs/benchmarks.md, "Retrieval quality").
DEFAULT_ARCH = "patch_kmeans"
DEFAULT_IMAGE_SIZE = {"conv_ae": 128, "patch_kmeans": 32}


@dataclass
class EncoderConfig:
    arch: str = "conv_ae"
    image_size: int | None = None  # square input side; None: the architecture's default
    in_channels: int = 3
    dim: int = 256  # output width = embedding width (CBIR_EMBEDDING_DIM)
    # conv_ae: channels of the stride-2 stages; image_size must be a multiple of 2 ** len(widths)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    # patch_kmeans: patch side, dictionary atoms, pooling grid, gradient-histogram cells and the
    # exponent of the PCA eigenvalues that the projection divides by (0: plain PCA, 0.5: whitening)
    patch_size: int = 5
    dictionary_size: int = 256
    pool_grid: int = 4
    hog_cells: int = 8
    colour_grid: int = 1
    colour_weight: float = 0.3
    whitening_power: float = 0.2
    # patch_kmeans: also keep each atom's strongest response anywhere in the image (global max
    # pooling): whether a pattern occurs at all, wherever it is
    max_pooled_codes: bool = True
    # patch_kmeans: gradient histograms again on these coarser grids of cells, each level a block
    # of its own (a pyramid of HOG, as PHOG: Bosch, Zisserman & Munoz, "Representing shape with a
    # spatial pyramid kernel", 2007): the outline at the scale of the whole object, which cells of
    # a few pixels cut up
    hog_pyramid: tuple[int, ...] = (4, 2)
    # patch_kmeans: then refine the projection with a whitening learned from pairs of mutual
    # nearest neighbours among this many (0: keep the PCA projection)
    neighbour_pairs: int = 10
    # patch_kmeans: a bag of dense gradient descriptors (RootSIFT-like: 4x4 cells of 8 signed
    # orientations, at each cell size of ``word_cells``, every half cell) on the picture at
    # ``word_side`` px, reduced to ``word_dim`` by a PCA and aggregated against
    # ``gradient_words`` atoms as a VLAD (0: no such block); the block counts ``word_weight``
    word_side: int = 128
    word_cells: tuple[int, ...] = (4, 8)
    word_dim: int = 64
    gradient_words: int = 128
    word_weight: float = 3.0

    def __post_init__(self) -> None:
        if self.arch not in DEFAULT_IMAGE_SIZE:
            raise ValueError(f"unknown architecture {self.arch!r}; choose from {', '.join(sorted(DEFAULT_IMAGE_SIZE))}")
        if self.image_size is None:
            self.image_size = DEFAULT_IMAGE_SIZE[self.arch]
        self.widths = tuple(self.widths)
        self.hog_pyramid = tuple(self.hog_pyramid)
        self.word_cells = tuple(self.word_cells)
        if self.dim < 1:
            raise ValueError("dim must be at least 1")
        if self.arch == "conv_ae":
            stride = 2 ** len(self.widths)
            if self.image_size % stride:
                raise ValueError(f"image_size {self.image_size} must be a multiple of {stride}")
        else:
            if self.image_size < 2 * self.patch_size or self.image_size % self.hog_cells:
                raise ValueError(
                    f"image_size {self.image_size} must be at least {2 * self.patch_size} and a multiple of "
                    f"hog_cells ({self.hog_cells})"
                )
            for cells in self.hog_pyramid:
                if cells < 2 or self.image_size % cells:
                    raise ValueError(f"hog_pyramid level {cells} must be at least 2 and divide image_size {self.image_size}")
            if self.gradient_words:
                if self.word_side < self.image_size or self.word_side % self.image_size:
                    raise ValueError(f"word_side {self.word_side} must be a multiple of image_size {self.image_size}")
                for cells in self.word_cells:
                    if cells < 2 or 4 * cells > self.word_side:
                        raise ValueError(f"word_cells size {cells} must be at least 2 and at most a quarter of word_side")
            if self.dim > self.feature_width:
                raise ValueError(f"dim {self.dim} exceeds the {self.feature_width} pooled features it projects")

    @property
    def block_widths(self) -> tuple[int, ...]:
        """patch_kmeans, in order: dictionary codes averaged on the pooling grid, their maximum over
        the image (with ``max_pooled_codes``), gradient histograms (36 per 2x2 block of cells) on
        ``hog_cells`` cells and then on each ``hog_pyramid`` level, colour histograms (64 bins per
        cell)."""
        maximum = (self.dictionary_size,) if self.max_pooled_codes else ()
        gradients = tuple(36 * (cells - 1) ** 2 for cells in (self.hog_cells, *self.hog_pyramid))
        words = (self.gradient_words * self.word_dim,) if self.gradient_words else ()
        return self.dictionary_size * self.pool_grid**2, *maximum, *gradients, 64 * self.colour_grid**2, *words

    @property
    def block_weights(self) -> tuple[float, ...]:
        """patch_kmeans: each block's weight once it is unit-length; colour counts ``colour_weight``,
        the gradient words ``word_weight``."""
        words = (self.word_weight,) if self.gradient_words else ()
        return (1.0,) * (len(self.block_widths) - 1 - len(words)) + (self.colour_weight, *words)

    @property
    def input_size(self) -> int:
        """The side of the pictures the encoder takes: ``image_size``, or ``word_side`` when the
        gradient words are on (the other blocks then see the picture reduced to ``image_size``)."""
        if self.arch == "patch_kmeans" and self.gradient_words:
            return max(self.image_size, self.word_side)
        return self.image_size

    @property
    def feature_width(self) -> int:
        return sum(self.block_widths)

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
    def __init__(self, config: EncoderConfig) -> None:
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

    objective = "reconstruction"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


def build_model(config: EncoderConfig) -> nn.Module:
    from workers.autoencoder.patch_dictionary import PatchDictionaryEncoder

    architectures = {"conv_ae": ConvAutoencoder, "patch_kmeans": PatchDictionaryEncoder}
    return architectures[config.arch](config)


def save_checkpoint(path, *, model: nn.Module, config: EncoderConfig, extra: dict | None = None) -> None:
    """The config travels with the weights, so ``load_checkpoint`` needs nothing but the file."""
    torch.save({"config": config.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}}, path)


# Config fields added after checkpoints were first written, with the value that rebuilds the
# encoder those older checkpoints hold (their buffers were fitted without the newer block).
CHECKPOINT_DEFAULTS = {"max_pooled_codes": False, "hog_pyramid": (), "gradient_words": 0}


def load_checkpoint(path, *, map_location="cpu") -> tuple[nn.Module, EncoderConfig]:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    config = EncoderConfig(**{**CHECKPOINT_DEFAULTS, **payload["config"]})
    model = build_model(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, config
