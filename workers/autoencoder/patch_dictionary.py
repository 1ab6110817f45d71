"""``patch_kmeans``: a label-free encoder learned from the collection's own patches.

The single-layer recipe of Coates & Ng ("An Analysis of Single-Layer Networks in Unsupervised
Feature Learning", 2011; "Learning Feature Representations with K-means", 2012), made into a
retrieval fingerprint:

1. every 5x5 colour patch is brightness/contrast normalised and ZCA-whitened;
2. it is compared with a dictionary of ``dictionary_size`` atoms learned by k-means on patches
   sampled from the collection, with the "triangle" code ``max(0, mean_k(d) - d_k)`` (sparse: about
   half the atoms respond to a patch);
3. the codes are averaged over a ``pool_grid`` x ``pool_grid`` grid (layout survives, small shifts
   do not matter), and each atom's strongest response anywhere in the image is kept beside them
   (global max pooling: whether a pattern occurs at all, wherever it is, which averages dilute
   when the pattern is small; Boureau et al., "A Theoretical Analysis of Feature Pooling in
   Visual Recognition", 2010, show max pooling suits sparse codes like these);
4. histograms of oriented gradients (block-normalised, colour: the channel with the strongest
   gradient) add shape at the same scale and, on coarser grids (``hog_pyramid``), at the scale of
   the whole object; a joint RGB histogram adds colour, which the contrast-normalised patches
   and the gradients do not see (weighted 0.3: a red shirt should find shirts before it finds
   red things);
5. the blocks are square-rooted (Hellinger: bursty responses stop dominating), centred and
   L2-normalised, then projected by a PCA fitted on the collection, each component divided by its
   eigenvalue to the power ``whitening_power`` (partial whitening: rare directions count more,
   without amplifying the noise of the smallest ones), and L2-normalised;
6. that projection is then refined by a whitening learned from the collection's own mutual
   nearest neighbours (Radenovic et al., "CNN Image Retrieval Learns from BoW", 2016, learn it
   from matching pairs; here the pairs are images that are each among the other's
   ``neighbour_pairs`` nearest, no labels): the ways in which near-duplicates of one thing differ
   are divided out, the ways in which the collection varies otherwise are kept. Mutual neighbours
   are right far more often than not (P@10 above 0.8 on Fashion-MNIST), so what varies between
   them is mostly nuisance.

7. beside those global blocks, a bag of local shape words: dense gradient descriptors in the
   manner of SIFT (Lowe 2004; dense, as in Bosch et al. 2007 and Vedaldi & Fulkerson's dsift),
   each 4x4 cells of 8 signed gradient orientations, taken every half cell at two cell sizes on
   the picture at ``word_side`` px, square-rooted after L1 normalisation (RootSIFT, Arandjelovic
   & Zisserman 2012), reduced by a PCA and aggregated as a VLAD against ``gradient_words`` atoms
   learned by k-means (Jegou et al. 2010: the sum of each descriptor's residual to its nearest
   atom, per atom), signed-square-rooted and normalised per atom (intra-normalisation,
   Arandjelovic & Zisserman 2013). Unlike the grid-pooled blocks it does not care where a part
   is: a beak or a wheel counts wherever it is drawn.

Why this: on the two shared sets (`bench/quality.py`, docs/benchmarks.md) it beats the seed
autoencoder by 5 mAP@10 points and trains in under a minute on two CPU cores. Nothing in it is
specific to a dataset: the dictionary, the means and the projection are all fitted on whatever
collection it is trained on.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from workers.autoencoder.model import EncoderConfig

# Patches sampled for the whitening and the k-means: about 400 per atom for 256 atoms of 75 values.
DICTIONARY_PATCHES = 100_000
# The PCA is fitted on at most this many images' pooled features (10k x 6,180 floats = 247 MB).
PROJECTION_IMAGES = 10_000
ENCODE_BATCH = 128
# Added to each patch's variance before contrast normalisation (pixels in [0, 1]) so flat patches
# stay flat instead of amplifying noise; and to the patch covariance's eigenvalues before ZCA.
CONTRAST_EPSILON = 0.01
ZCA_EPSILON = 0.1
# The neighbour whitening works in the top principal directions of the features: wide enough to
# hold what separates things, narrow enough for the pairs of 10,000 images to estimate their
# covariance (384-768 measured within 0.1 point of each other on both shared sets); a fraction of
# the largest eigenvalue is added to each (shrinkage) so that no direction is stretched without end.
NEIGHBOUR_SUBSPACE = 512
NEIGHBOUR_SHRINKAGE = 0.01
HOG_BINS = 9
COLOUR_LEVELS = 4
WORD_ORIENTATIONS = 8
# Added to each gradient descriptor's L1 norm before it is square-rooted, so that a flat region
# (a plain background) gives a small descriptor instead of its noise stretched to unit length.
WORD_EPSILON = 0.16
# The descriptors' PCA and k-means are fitted on WORD_SAMPLE descriptors, WORD_SAMPLE_PER_IMAGE
# drawn from each of up to WORD_SAMPLE / WORD_SAMPLE_PER_IMAGE images (about 1,200 per atom).
WORD_SAMPLE = 150_000
WORD_SAMPLE_PER_IMAGE = 250
WORD_KMEANS_PASSES = 20
# At encoding time on a CPU, each descriptor's nearest word is found for this many descriptors at a
# time: their distances to the words (2 MB) stay in cache, where the whole batch's would not.
WORD_SEARCH_ROWS = 4096


def _normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    centred = patches - patches.mean(1, keepdim=True)
    return centred / (centred.var(1, keepdim=True) + CONTRAST_EPSILON).sqrt()


def colour_histograms(x: torch.Tensor, *, grid: int) -> torch.Tensor:
    """Joint RGB histograms (4 levels per channel, 64 bins) of (B, 3, S, S) images in [0, 1], one per
    cell of a ``grid`` x ``grid`` layout: the only block that sees colour, since the patches are
    contrast-normalised and the gradients are colour-blind. Returns (B, 64 * grid ** 2)."""
    levels = (x * (COLOUR_LEVELS - 0.001)).long()  # (B, 3, S, S)
    bins = (levels[:, 0] * COLOUR_LEVELS + levels[:, 1]) * COLOUR_LEVELS + levels[:, 2]  # (B, S, S)
    one_hot = F.one_hot(bins, COLOUR_LEVELS**3).permute(0, 3, 1, 2).to(x.dtype)  # (B, 64, S, S)
    return F.adaptive_avg_pool2d(one_hot, grid).flatten(1)


def gradient_histograms(x: torch.Tensor, *, cells: int) -> torch.Tensor:
    """HOG of (B, C, S, S) images in [0, 1]: ``cells`` x ``cells`` cells of 9 unsigned orientations,
    2x2 blocks L2-normalised and clipped at 0.2 (Dalal & Triggs). Returns (B, 36 * (cells - 1) ** 2)."""
    return gradient_histogram_levels(x, levels=(cells,))[0]


def gradient_histogram_levels(x: torch.Tensor, *, levels: tuple[int, ...]) -> list[torch.Tensor]:
    """``gradient_histograms`` for each cell count in ``levels``, the gradients computed once."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]
    gy = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
    magnitude = (gx * gx + gy * gy).sqrt()
    magnitude, channel = magnitude.max(1, keepdim=True)  # (B, 1, S, S): the strongest colour edge
    angle = torch.atan2(gy.gather(1, channel), gx.gather(1, channel)) % math.pi
    position = angle / math.pi * HOG_BINS
    lower = position.floor().long() % HOG_BINS
    upper_weight = position - position.floor()
    histogram = torch.zeros(x.shape[0], HOG_BINS, *x.shape[2:], dtype=x.dtype, device=x.device)
    histogram.scatter_add_(1, lower, magnitude * (1 - upper_weight))
    histogram.scatter_add_(1, (lower + 1) % HOG_BINS, magnitude * upper_weight)
    result = []
    for cells in levels:
        pooled = F.avg_pool2d(histogram, x.shape[-1] // cells)  # (B, 9, cells, cells)
        blocks = F.unfold(pooled, 2).transpose(1, 2)  # (B, (cells-1)^2, 36)
        result.append(F.normalize(F.normalize(blocks, dim=2).clamp(max=0.2), dim=2).flatten(1))
    return result


def orientation_maps(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> (B, 8, S, S): the grey picture's gradient magnitude (central
    differences) by signed orientation, each pixel shared linearly between its two nearest of
    ``WORD_ORIENTATIONS`` bins."""
    grey = x.mean(1, keepdim=True)
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / 2
    gy = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / 2
    magnitude = (gx * gx + gy * gy).sqrt()
    position = torch.atan2(gy, gx) % (2 * math.pi) / (2 * math.pi) * WORD_ORIENTATIONS
    lower = position.floor().long() % WORD_ORIENTATIONS
    upper_weight = position - position.floor()
    maps = torch.zeros(x.shape[0], WORD_ORIENTATIONS, *x.shape[2:], dtype=x.dtype, device=x.device)
    maps.scatter_add_(1, lower, magnitude * (1 - upper_weight))
    maps.scatter_add_(1, (lower + 1) % WORD_ORIENTATIONS, magnitude * upper_weight)
    return maps


def word_cells(maps: torch.Tensor, *, cell: int) -> torch.Tensor:
    """Orientation histograms of ``cell`` x ``cell`` pixels, every half cell: (B, 8, G, G)."""
    return F.avg_pool2d(maps, cell, stride=max(cell // 2, 1))


def root_descriptors(cells: torch.Tensor) -> torch.Tensor:
    """Every 4x4 block of non-overlapping cells (dilation 2 on the half-cell grid) as a 128-value
    descriptor, L1-normalised (plus ``WORD_EPSILON``) and square-rooted: (B * L, 128). The
    definition that ``PatchDictionaryEncoder.word_vlad`` computes as convolutions."""
    d = F.unfold(cells, kernel_size=4, dilation=2).transpose(1, 2)  # (B, L, 128)
    return (d / (d.sum(2, keepdim=True) + WORD_EPSILON)).sqrt().reshape(-1, d.shape[2])


def triangle_codes(z: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """The triangle code ``max(0, mean_k(d) - d_k)`` of each row of ``z`` (N, D) against ``atoms``
    (K, D), d the Euclidean distances. Written out with one matrix product and in-place steps on
    the one (N, K) buffer: twice as fast as ``torch.cdist`` followed by the code on a CPU, where
    the (N, K) temporaries dominate (N is 784 patches per 32 px image)."""
    distances = torch.addmm(z.pow(2).sum(1, keepdim=True), z, atoms.T, alpha=-2)
    distances.add_(atoms.pow(2).sum(1)).clamp_(min=0).sqrt_()
    mean = distances.mean(1, keepdim=True)
    return distances.neg_().add_(mean).clamp_(min=0)


class PatchDictionaryEncoder(nn.Module):
    objective = "dictionary"

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        patch_values = config.in_channels * config.patch_size**2
        # All state is fitted (fit_patch_dictionary), none trained by gradients; buffers travel
        # in the state_dict like weights.
        self.register_buffer("patch_mean", torch.zeros(patch_values))
        self.register_buffer("zca", torch.eye(patch_values))
        self.register_buffer("atoms", torch.zeros(config.dictionary_size, patch_values))
        if config.gradient_words:
            self.register_buffer("word_mean", torch.zeros(WORD_ORIENTATIONS * 16))
            self.register_buffer("word_pca", torch.zeros(WORD_ORIENTATIONS * 16, config.word_dim))
            self.register_buffer("words", torch.zeros(config.gradient_words, config.word_dim))
        self.register_buffer("block_mean", torch.zeros(config.feature_width))  # of the square-rooted blocks
        self.register_buffer("feature_mean", torch.zeros(config.feature_width))
        self.register_buffer("projection", torch.zeros(config.feature_width, config.dim))

    def whitened_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B * L, C * P * P), L = (S - P + 1) ** 2 patch positions: every patch
        contrast-normalised (``_normalise_patches``), centred and ZCA-whitened.

        Computed as convolutions instead of on the unfolded patches (a copy 75 times the image):
        the ZCA is linear, so ((v - mean) / std) @ zca = (v @ zca - mean * sum(zca)) / std, where
        v @ zca is a convolution with the ZCA's columns as filters and each patch's mean and
        variance come from box filters. A third of the time on a CPU for the same numbers
        (equal to the unfolded formula within float rounding, tested).
        """
        channels, size = x.shape[1], self.config.patch_size
        values = channels * size * size
        # cuDNN may run float32 convolutions in TF32 (a 10-bit mantissa). On a GPU these three run
        # in float64 instead (cheap: 3 input channels), so a GPU worker computes the CPU's vectors;
        # switching cuDNN's TF32 off would change process-wide state under other threads.
        work = x.double() if x.is_cuda else x
        box = torch.full((1, channels, size, size), 1.0 / values, dtype=work.dtype, device=x.device)
        zca = self.zca.to(work.dtype)
        mean = F.conv2d(work, box)  # (B, 1, L', L')
        variance = (F.conv2d(work * work, box) - mean * mean).clamp_(min=0) * (values / (values - 1))  # unbiased, as .var()
        projected = F.conv2d(work, zca.T.reshape(values, channels, size, size))  # (B, values, L', L')
        z = (projected - mean * zca.sum(0).view(1, -1, 1, 1)) * (variance + CONTRAST_EPSILON).rsqrt()
        z = z.to(x.dtype) - (self.patch_mean @ self.zca).view(1, -1, 1, 1)
        return z.permute(0, 2, 3, 1).reshape(-1, values)

    def patch_codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B * L, K): every patch's triangle code against the dictionary."""
        return triangle_codes(self.whitened_patches(x), self.atoms)

    def reduced(self, x: torch.Tensor) -> torch.Tensor:
        """The picture at ``image_size``, which the blocks before the gradient words see: the
        encoder's input itself, or that input averaged over square cells when it is larger."""
        factor = x.shape[-1] // self.config.image_size
        return x if factor == 1 else F.avg_pool2d(x, factor)

    def projected_descriptors(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, word_side, word_side) -> for each cell size, (B, L, word_dim): every gradient
        descriptor (``root_descriptors``), centred and reduced by the fitted PCA.

        Computed as convolutions instead of on the unfolded descriptors (a copy 16 times the cell
        grid): sqrt(d / n) = sqrt(d) / sqrt(n), so the PCA of the square-rooted cells is a dilated
        convolution with its columns as filters, divided by the square root of each block's L1 norm
        (a box filter). On a CPU the convolution reads and writes channels last, so that each
        descriptor's values lie together and the result needs no transposing copy. On a GPU they run in float64, as
        ``whitened_patches``, so that a GPU worker assigns each descriptor to the same word as the
        CPU."""
        maps = orientation_maps(x)
        work_dtype = torch.float64 if x.is_cuda else x.dtype
        layout = torch.contiguous_format if x.is_cuda else torch.channels_last
        filters = self.word_pca.T.reshape(-1, WORD_ORIENTATIONS, 4, 4).to(work_dtype)
        box = torch.ones(1, 1, 4, 4, dtype=work_dtype, device=x.device)
        shift = (self.word_mean @ self.word_pca).to(work_dtype)
        parts = []
        for cell in self.config.word_cells:
            cells = word_cells(maps, cell=cell).to(work_dtype)
            norm = F.conv2d(cells.sum(1, keepdim=True), box, dilation=2)  # (B, 1, G', G')
            z = F.conv2d(cells.sqrt().contiguous(memory_format=layout), filters, dilation=2)  # (B, word_dim, G', G')
            z = z.permute(0, 2, 3, 1).mul_((norm + WORD_EPSILON).rsqrt_().permute(0, 2, 3, 1)).sub_(shift)  # (B, G', G', word_dim)
            parts.append(z.to(x.dtype).reshape(len(x), -1, self.config.word_dim))
        return parts

    def word_vlad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, gradient_words * word_dim): each descriptor's residual to its nearest word, summed per
        word (VLAD), signed-square-rooted and normalised per word."""
        count = self.config.gradient_words
        squared = self.words.pow(2).sum(1)
        sums = torch.zeros(len(x) * count, self.config.word_dim, dtype=x.dtype, device=x.device)
        counts = torch.zeros(len(x) * count, dtype=x.dtype, device=x.device)
        for part in self.projected_descriptors(x):  # one cell size: (B, L, word_dim)
            z = part.reshape(-1, part.shape[2])
            # |w|^2 - 2 z.w; on a CPU a block of rows at a time, so that the distances stay in cache
            blocks = (z,) if z.is_cuda else z.split(WORD_SEARCH_ROWS)
            nearest = torch.cat([torch.addmm(squared, rows, self.words.T, alpha=-2).argmin(1) for rows in blocks])
            slot = torch.arange(len(x), device=x.device).repeat_interleave(part.shape[1]) * count + nearest
            sums.index_add_(0, slot, z)
            counts += torch.bincount(slot, minlength=len(x) * count).to(x.dtype)
        # the sum of residuals z - w over a word's descriptors is their sum less their count times w
        vlad = sums.view(len(x), count, -1) - counts.view(len(x), count, 1) * self.words
        return F.normalize(vlad.sign() * vlad.abs().sqrt(), dim=2).flatten(1)

    def raw_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, feature_width): the blocks of ``EncoderConfig.block_widths`` (pooled dictionary codes,
        gradient histograms, colour histograms, square-rooted; the gradient words, signed-rooted),
        before centring. ``x`` is at ``EncoderConfig.input_size``."""
        config = self.config
        words = self.word_vlad(x) if config.gradient_words else None
        x = self.reduced(x)
        codes = self.patch_codes(x)  # (B * L, K)
        side = config.image_size - config.patch_size + 1
        codes = codes.view(len(x), side, side, -1).permute(0, 3, 1, 2)  # (B, K, side, side)
        blocks = [F.adaptive_avg_pool2d(codes, config.pool_grid).flatten(1)]
        if config.max_pooled_codes:
            blocks.append(codes.amax(dim=(2, 3)))  # (B, K)
        blocks += gradient_histogram_levels(x, levels=(config.hog_cells, *config.hog_pyramid))
        blocks.append(colour_histograms(x, grid=config.colour_grid))
        rooted = torch.cat(blocks, dim=1).sqrt()
        return rooted if words is None else torch.cat([rooted, words], dim=1)

    def features(self, raw: torch.Tensor) -> torch.Tensor:
        """Each block centred, unit-length and weighted (``EncoderConfig.block_weights``), side by side."""
        parts = (raw - self.block_mean).split(self.config.block_widths, dim=1)
        return torch.cat([F.normalize(part, dim=1) * weight for part, weight in zip(parts, self.config.block_weights)], dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, S, S) in [0, 1]. Distances in float16 would blur the triangle code, so the
        # encoder always computes in float32, also under autocast on a GPU.
        with torch.autocast(device_type=x.device.type, enabled=False):
            features = self.features(self.raw_blocks(x.float()))  # (B, feature_width)
            return F.normalize((features - self.feature_mean) @ self.projection, dim=1)  # (B, dim)


def _sample_patches(images: torch.Tensor, *, config: EncoderConfig, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random patches, as flat vectors, from random positions of random images, as the
    encoder's ``reduced`` picture holds them when ``images`` are larger than ``image_size``."""
    side = config.image_size - config.patch_size + 1
    factor = images.shape[-1] // config.image_size
    which = torch.randint(0, len(images), (count,), generator=generator)
    rows = torch.randint(0, side, (count,), generator=generator) * factor
    cols = torch.randint(0, side, (count,), generator=generator) * factor
    offsets = torch.arange(config.patch_size * factor)
    channels = torch.arange(images.shape[1])[None, :, None, None]
    flat = []
    for start in range(0, count, 10_000):  # (chunk, C, P * factor, P * factor) gathered by advanced indexing
        part = slice(start, start + 10_000)
        patches = images[
            which[part, None, None, None],
            channels,
            (rows[part, None] + offsets)[:, None, :, None],
            (cols[part, None] + offsets)[:, None, None, :],
        ].float().div_(255.0)
        flat.append((F.avg_pool2d(patches, factor) if factor > 1 else patches).flatten(1))
    return torch.cat(flat)


def _kmeans_step(z: torch.Tensor, atoms: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """One Lloyd iteration; an atom left without patches restarts at a random patch."""
    nearest_distance, assignment = torch.cdist(z, atoms).min(1)
    sums = torch.zeros_like(atoms).index_add_(0, assignment, z)
    counts = torch.bincount(assignment, minlength=len(atoms)).to(z.dtype)
    restart = z[torch.randint(0, len(z), (len(atoms),), generator=generator).to(z.device)]
    updated = torch.where((counts == 0)[:, None], restart, sums / counts.clamp(min=1)[:, None])
    return updated, nearest_distance.pow(2).mean().item()


@torch.inference_mode()
def fit_patch_dictionary(
    images: torch.Tensor,
    *,
    model_config: EncoderConfig,
    epochs: int,
    seed: int,
    device: torch.device,
    max_minutes: float | None = None,
    show_progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> tuple[PatchDictionaryEncoder, dict]:
    """Fit the encoder on ``images`` (uint8, (N, 3, S, S)); an epoch is one k-means pass over the
    sampled patches, and the "loss" is the mean squared distance of a patch to its atom.
    Reproducible for a fixed seed on the same device."""
    started = time.monotonic()
    generator = torch.Generator().manual_seed(seed)
    model = PatchDictionaryEncoder(model_config).to(device)
    history = {
        "train_loss": [], "val_loss": [], "device": str(device), "images": len(images), "epochs_run": 0,
        "objective": "k-means patch quantisation (mean squared distance)",
    }
    patches = _normalise_patches(
        _sample_patches(images, config=model_config, count=DICTIONARY_PATCHES, generator=generator).to(device)
    )
    model.patch_mean = patches.mean(0)
    centred = patches - model.patch_mean
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(centred))
    model.zca = eigenvectors @ torch.diag((eigenvalues.clamp(min=0) + ZCA_EPSILON).rsqrt()) @ eigenvectors.T
    z = centred @ model.zca
    atoms = z[torch.randperm(len(z), generator=generator)[: model_config.dictionary_size].to(device)].clone()
    with tqdm(total=epochs, desc="k-means", unit="pass", disable=not show_progress) as progress:
        for epoch in range(epochs):
            atoms, loss = _kmeans_step(z, atoms, generator)
            history["train_loss"].append(loss)
            history["val_loss"].append(None)
            history["epochs_run"] = epoch + 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if on_epoch is not None:
                on_epoch(epoch + 1, history)
            if max_minutes is not None and time.monotonic() - started > max_minutes * 60:
                break
    model.atoms = atoms
    del patches, centred, z

    subset = torch.randperm(len(images), generator=generator)[:PROJECTION_IMAGES]
    if model_config.gradient_words:
        _fit_gradient_words(model, images, generator=generator, device=device)
    raw = torch.cat(
        [
            model.raw_blocks(images[subset[start : start + ENCODE_BATCH]].to(device).float().div_(255.0))
            for start in tqdm(range(0, len(subset), ENCODE_BATCH), desc="projection", unit="batch", disable=not show_progress)
        ]
    )
    model.block_mean = raw.mean(0)
    features = model.features(raw)
    del raw
    model.feature_mean = features.mean(0)
    centred = features - model.feature_mean
    del features
    model.projection = _partial_whitening(centred, dim=model_config.dim, power=model_config.whitening_power, seed=seed)
    if model_config.neighbour_pairs:
        model.projection, history["neighbour_pairs"] = neighbour_whitening(
            centred, start=model.projection, neighbours=model_config.neighbour_pairs, seed=seed
        )
    history["seconds"] = round(time.monotonic() - started, 2)
    return model.cpu().eval(), history


def _fit_gradient_words(model: PatchDictionaryEncoder, images: torch.Tensor, *, generator: torch.Generator, device: torch.device) -> None:
    """The gradient descriptors' mean, PCA and ``gradient_words`` atoms (k-means), fitted on
    ``WORD_SAMPLE`` descriptors drawn evenly from random images."""
    config = model.config
    chosen = torch.randperm(len(images), generator=generator)[: WORD_SAMPLE // WORD_SAMPLE_PER_IMAGE]
    sample = []
    for start in range(0, len(chosen), 32):
        x = images[chosen[start : start + 32]].to(device).float().div_(255.0)
        maps = orientation_maps(x)
        per_image = torch.cat(
            [root_descriptors(word_cells(maps, cell=cell)).view(len(x), -1, WORD_ORIENTATIONS * 16) for cell in config.word_cells], 1
        )  # (b, L, 128)
        keep = torch.stack([torch.randperm(per_image.shape[1], generator=generator)[:WORD_SAMPLE_PER_IMAGE] for _ in range(len(x))])
        sample.append(per_image[torch.arange(len(x))[:, None], keep.to(device)].reshape(-1, per_image.shape[2]))
    sample = torch.cat(sample)
    model.word_mean = sample.mean(0)
    centred = sample - model.word_mean
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(centred))
    model.word_pca = eigenvectors[:, eigenvalues.argsort(descending=True)[: config.word_dim]].contiguous()
    z = centred @ model.word_pca
    words = z[torch.randperm(len(z), generator=generator)[: config.gradient_words].to(device)].clone()
    for _ in range(WORD_KMEANS_PASSES):
        words, _ = _kmeans_step(z, words, generator)
    model.words = words


def _partial_whitening(centred: torch.Tensor, *, dim: int, power: float, seed: int) -> torch.Tensor:
    """(feature_width, dim) from centred (N, feature_width) features: the top ``dim`` principal
    directions, each divided by its variance to the power ``power``. With fewer images than
    ``dim`` the remaining columns stay zero."""
    rank = min(dim, len(centred) - 1, centred.shape[1])
    projection = torch.zeros(centred.shape[1], dim, device=centred.device)
    if rank < 1:
        return projection
    if len(centred) <= 4 * dim:  # small collections: the exact decomposition is cheap
        _, singular, rows = torch.linalg.svd(centred, full_matrices=False)
        directions = rows.T
    else:  # randomized: the 10k x 6,180 case takes seconds instead of minutes
        torch.manual_seed(seed)
        _, singular, directions = torch.pca_lowrank(centred, q=min(rank + 16, *centred.shape), center=False, niter=3)
    variance = singular[:rank].pow(2) / len(centred)
    projection[:, :rank] = directions[:, :rank] * (variance + 1e-3 * variance[0]).pow(-power)
    return projection


def mutual_neighbour_pairs(z: torch.Tensor, *, k: int, block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i < j) of rows of the unit vectors ``z`` (N, D) that are each among the other's
    ``k`` nearest by cosine, itself excluded. Scores ``block`` rows at a time, so memory stays
    at block x N."""
    count = len(z)
    k = min(k, count - 1)
    if k < 1:
        empty = torch.zeros(0, dtype=torch.long, device=z.device)
        return empty, empty
    nearest = []
    for start in range(0, count, block):
        scores = z[start : start + block] @ z.T  # (block, N)
        rows = torch.arange(len(scores), device=z.device)
        scores[rows, rows + start] = -math.inf
        nearest.append(scores.topk(k, dim=1).indices)
    nearest = torch.cat(nearest)  # (N, k)
    i = torch.arange(count, device=z.device).repeat_interleave(k)
    j = nearest.flatten()
    mutual = torch.isin(j * count + i, i * count + j) & (i < j)
    return i[mutual], j[mutual]


def neighbour_whitening(centred: torch.Tensor, *, start: torch.Tensor, neighbours: int, seed: int) -> tuple[torch.Tensor, int]:
    """A (feature_width, dim) projection learned from centred (N, feature_width) features: mutual
    neighbours are found with the ``start`` projection; within the top principal directions,
    the covariance of their differences is whitened away, then the result is rotated onto its
    own principal directions and cut to ``dim``. Returns the projection and the number of pairs
    it learned from; ``start`` and 0 when the collection is too small to estimate that covariance."""
    dim = start.shape[1]
    subspace = min(max(NEIGHBOUR_SUBSPACE, dim), len(centred) - 1, centred.shape[1])
    i, j = mutual_neighbour_pairs(F.normalize(centred @ start, dim=1), k=neighbours)
    if subspace < dim or len(i) < subspace:
        return start, 0
    torch.manual_seed(seed)
    _, _, directions = torch.pca_lowrank(centred, q=min(subspace + 16, *centred.shape), center=False, niter=3)
    directions = directions[:, :subspace]
    reduced = centred @ directions  # (N, subspace)
    differences = reduced[i] - reduced[j]  # (pairs, subspace)
    eigenvalues, eigenvectors = torch.linalg.eigh(differences.T @ differences / len(differences))
    eigenvalues = eigenvalues.clamp(min=0) + NEIGHBOUR_SHRINKAGE * eigenvalues.max()
    whiten = eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T
    whitened = reduced @ whiten
    _, rotation = torch.linalg.eigh(whitened.T @ whitened / len(whitened))  # ascending
    return directions @ whiten @ rotation.flip(1)[:, :dim], len(i)


# Metric learning with labels (train_encoder --use-labels): the projection, started from the
# label-free one, is trained with a batch-hard triplet loss (Hermans et al. 2017, "In Defense of
# the Triplet Loss") on cosine distances; the dictionary and the histograms stay as fitted.
TRIPLET_MARGIN = 0.1
TRIPLET_BATCH = 256
TRIPLET_LEARNING_RATE = 1e-3


def batch_hard_triplet_loss(z: torch.Tensor, labels: torch.Tensor, *, margin: float = TRIPLET_MARGIN) -> torch.Tensor:
    """For each anchor with a positive in the batch: its farthest positive against its nearest
    negative, on the cosine distance of the unit vectors ``z``."""
    distance = 1 - z @ z.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    positives = same & ~eye
    hardest_positive = distance.masked_fill(~positives, -1).max(1).values
    hardest_negative = distance.masked_fill(same, 3).min(1).values
    usable = positives.any(1) & (~same).any(1)
    if not usable.any():
        return z.sum() * 0
    return (hardest_positive - hardest_negative + margin).clamp(min=0)[usable].mean()


def learn_projection_with_labels(
    model: PatchDictionaryEncoder,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    show_progress: bool = True,
) -> list[float]:
    """Train ``model.projection`` on labelled ``images`` (uint8, (N, 3, S, S)); ``labels`` are
    integers (N,). Returns the mean loss per epoch."""
    generator = torch.Generator().manual_seed(seed)
    model = model.to(device)
    with torch.inference_mode():
        features = torch.cat(
            [
                model.features(model.raw_blocks(images[start : start + ENCODE_BATCH].to(device).float().div_(255.0)))
                for start in range(0, len(images), ENCODE_BATCH)
            ]
        ) - model.feature_mean
    features, labels = features.clone(), labels.to(device)
    projection = nn.Parameter(model.projection.clone())
    optimizer = torch.optim.Adam([projection], lr=TRIPLET_LEARNING_RATE)
    losses = []
    for _ in tqdm(range(epochs), desc="metric learning", unit="epoch", disable=not show_progress):
        order = torch.randperm(len(features), generator=generator).to(device)
        total, batches = 0.0, 0
        for start in range(0, len(order), TRIPLET_BATCH):
            batch = order[start : start + TRIPLET_BATCH]
            z = F.normalize(features[batch] @ projection, dim=1)
            loss = batch_hard_triplet_loss(z, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
    model.projection = projection.detach()
    model.cpu().eval()
    return losses
