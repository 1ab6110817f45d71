"""The default encoder, patch_kmeans: fitted on images made here, checked for shape, determinism,
what it ranks close, and that its checkpoint rebuilds it."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from workers.autoencoder.artifacts import dictionary_png
from workers.autoencoder.inference import load_embedder
from workers.autoencoder.model import EncoderConfig, load_checkpoint, save_checkpoint
from workers.autoencoder import patch_dictionary
from workers.autoencoder.patch_dictionary import (
    colour_histograms,
    gradient_histograms,
    mutual_neighbour_pairs,
    neighbour_whitening,
    orientation_maps,
    root_descriptors,
    triangle_codes,
    word_cells,
)
from workers.autoencoder.preprocessing import Preprocess
from workers.autoencoder.training import TrainingConfig, train_encoder_model

SIZE = 32


def _stripes(*, vertical: bool, period: int, colour: tuple[int, int, int], seed: int) -> np.ndarray:
    """(3, S, S) uint8: stripes of ``colour`` on white, with a little seeded noise."""
    rng = np.random.default_rng(seed)
    line = (np.arange(SIZE) // period) % 2 == 0
    mask = np.tile(line[None, :] if vertical else line[:, None], (SIZE, 1) if vertical else (1, SIZE))
    picture = np.full((SIZE, SIZE, 3), 255, dtype=np.int16)
    picture[mask] = colour
    picture += rng.integers(-12, 12, size=picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def _collection() -> tuple[torch.Tensor, list[tuple[bool, tuple]]]:
    """40 images: vertical or horizontal stripes, red or blue, periods 2-6."""
    kinds, arrays = [], []
    for seed in range(40):
        vertical, colour = seed % 2 == 0, ((200, 20, 20) if seed % 4 < 2 else (20, 20, 200))
        kinds.append((vertical, colour))
        arrays.append(_stripes(vertical=vertical, period=2 + seed % 5, colour=colour, seed=seed))
    return torch.from_numpy(np.stack(arrays)), kinds


# gradient words on the 32 px picture itself (the default takes them at 128 px), few and narrow
CONFIG = EncoderConfig(
    arch="patch_kmeans", image_size=SIZE, dim=16, dictionary_size=32, word_side=SIZE, word_cells=(4,), gradient_words=8, word_dim=16
)
TRAIN = TrainingConfig(epochs=5, seed=3, device="cpu")


@pytest.fixture(scope="module")
def fitted():
    images, kinds = _collection()
    model, history = train_encoder_model(images, model_config=CONFIG, train_config=TRAIN, show_progress=False)
    return model, history, images, kinds


def test_fit_reports_a_falling_quantisation_error_and_unit_vectors(fitted):
    model, history, images, _ = fitted
    assert history["epochs_run"] == 5 and len(history["train_loss"]) == 5
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["objective"].startswith("k-means")
    with torch.inference_mode():
        z = model.encode(images.float() / 255)
    assert z.shape == (40, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(40), atol=1e-5)


def test_fit_is_reproducible_with_a_seed(fitted):
    model, history, images, _ = fitted
    again, history_again = train_encoder_model(images, model_config=CONFIG, train_config=TRAIN, show_progress=False)
    assert history["train_loss"] == history_again["train_loss"]
    for name, value in model.state_dict().items():
        assert torch.allclose(value, again.state_dict()[name], atol=1e-6), name


def test_neighbours_share_orientation_first_and_colour_second(fitted):
    model, _, images, kinds = fitted
    with torch.inference_mode():
        z = model.encode(images.float() / 255)
    similarity = z @ z.T
    similarity.fill_diagonal_(-2)
    nearest = similarity.argmax(1)
    assert all(kinds[i][0] == kinds[j][0] for i, j in enumerate(nearest.tolist()))  # same orientation
    # Colour still counts: among the same orientation and period, the same colour ranks first.
    red_vertical = torch.from_numpy(_stripes(vertical=True, period=4, colour=(200, 20, 20), seed=100))
    blue_vertical = torch.from_numpy(_stripes(vertical=True, period=4, colour=(20, 20, 200), seed=101))
    red_again = torch.from_numpy(_stripes(vertical=True, period=4, colour=(210, 30, 25), seed=102))
    with torch.inference_mode():
        a, b, c = model.encode(torch.stack([red_vertical, blue_vertical, red_again]).float() / 255)
    assert (a @ c).item() > (a @ b).item()


def test_max_minutes_stops_after_the_first_pass():
    images, _ = _collection()
    _, history = train_encoder_model(
        images, model_config=CONFIG,
        train_config=TrainingConfig(epochs=50, seed=0, device="cpu", max_minutes=0.0), show_progress=False,
    )
    assert history["epochs_run"] == 1


def test_fewer_images_than_dimensions_still_give_unit_vectors():
    images, _ = _collection()
    model, _ = train_encoder_model(images[:6], model_config=CONFIG, train_config=TRAIN, show_progress=False)
    with torch.inference_mode():
        z = model.encode(images[:6].float() / 255)
    assert torch.isfinite(z).all() and torch.allclose(z.norm(dim=1), torch.ones(6), atol=1e-5)


def test_checkpoint_and_embedder_rebuild_the_same_encoder(fitted, tmp_path):
    model, _, _, _ = fitted
    path = tmp_path / "patch.pt"
    save_checkpoint(path, model=model, config=CONFIG)
    loaded, config = load_checkpoint(path)
    assert config == CONFIG
    pictures = [PILImage.new("RGB", (50, 20), (255, 0, 0)), PILImage.fromarray(_stripes(vertical=False, period=3, colour=(0, 0, 0), seed=1).transpose(1, 2, 0))]
    x = torch.stack([Preprocess(SIZE)(p) for p in pictures])
    with torch.inference_mode():
        assert torch.allclose(model.encode(x), loaded.encode(x), atol=1e-6)
    vectors = load_embedder(path, device="cpu").embed(pictures)
    assert vectors.shape == (2, 16) and vectors.dtype == np.float32
    assert np.allclose(vectors, loaded.encode(x).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def fitted_without_max_pool():
    """The encoder as it was before the max-pooled block, the gradient pyramid and the gradient
    words (``max_pooled_codes=False``, ``hog_pyramid=()``, ``gradient_words=0``)."""
    images, _ = _collection()
    config = EncoderConfig(arch="patch_kmeans", image_size=SIZE, dim=16, dictionary_size=32, max_pooled_codes=False, hog_pyramid=(), gradient_words=0)
    model, _ = train_encoder_model(images, model_config=config, train_config=TRAIN, show_progress=False)
    return model, config, images


def test_max_pooled_block_is_each_atoms_strongest_response(fitted, fitted_without_max_pool):
    """Beside the grid averages, each atom's largest code over all patch positions, square-rooted
    like every block; an encoder without it is 256 features narrower and still encodes."""
    model, _, images, _ = fitted
    x = images[:4].float() / 255
    with torch.inference_mode():
        codes = model.patch_codes(x).view(4, -1, CONFIG.dictionary_size)  # (B, L, K)
        raw = model.raw_blocks(x)
    grid_width = CONFIG.dictionary_size * CONFIG.pool_grid**2
    maximum = raw[:, grid_width : grid_width + CONFIG.dictionary_size]
    assert torch.allclose(maximum, codes.max(1).values.sqrt(), atol=1e-6)
    assert not torch.allclose(maximum, codes.mean(1).sqrt(), atol=1e-3)
    model, plain, _ = fitted_without_max_pool
    words = CONFIG.gradient_words * CONFIG.word_dim
    assert plain.feature_width == CONFIG.feature_width - CONFIG.dictionary_size - 36 * (3**2 + 1**2) - words
    with torch.inference_mode():
        z = model.encode(x)
    assert z.shape == (4, 16) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)


def test_hog_pyramid_levels_are_blocks_of_their_own(fitted):
    """After the gradient histograms on ``hog_cells`` cells come the same histograms on each
    coarser ``hog_pyramid`` grid (4x4 and 2x2 cells), square-rooted like every block; the colour
    block stays last."""
    model, _, images, _ = fitted
    x = images[:4].float() / 255
    with torch.inference_mode():
        blocks = model.raw_blocks(x).split(CONFIG.block_widths, dim=1)
    assert CONFIG.hog_pyramid == (4, 2) and CONFIG.block_widths[2:] == (36 * 7**2, 36 * 3**2, 36 * 1**2, 64, 8 * 16)
    for block, cells in zip(blocks[2:5], (8, 4, 2)):
        assert torch.allclose(block, gradient_histograms(x, cells=cells).sqrt(), atol=1e-6)
    assert torch.allclose(blocks[5], colour_histograms(x, grid=CONFIG.colour_grid).sqrt(), atol=1e-6)
    with pytest.raises(ValueError, match="hog_pyramid level 3"):
        EncoderConfig(arch="patch_kmeans", hog_pyramid=(3,))


def test_checkpoints_from_before_the_max_pooled_block_still_load(fitted_without_max_pool, tmp_path):
    """A checkpoint written before ``max_pooled_codes``, ``hog_pyramid`` and the gradient words
    existed has none of their keys and buffers fitted without those blocks: it loads as the
    encoder it is, takes 32 px pictures as before, and encodes as before."""
    model, older, images = fitted_without_max_pool
    payload_config = older.to_dict()
    for key in ("max_pooled_codes", "hog_pyramid", "gradient_words", "word_side", "word_cells", "word_dim", "word_weight"):
        del payload_config[key]
    path = tmp_path / "older.pt"
    torch.save({"config": payload_config, "state_dict": model.state_dict(), "extra": {}}, path)
    loaded, config = load_checkpoint(path)
    assert config == older and config.input_size == SIZE
    x = images[:3].float() / 255
    with torch.inference_mode():
        assert torch.allclose(loaded.encode(x), model.encode(x), atol=1e-6)


def test_whitened_patches_equal_the_unfolded_formula(fitted):
    """The encoder computes the whitened patches with convolutions; they must equal the textbook
    route: unfold every 5x5 patch, normalise its brightness and contrast, centre, multiply by
    the ZCA, in that patch order (image, row, column)."""
    model, _, images, _ = fitted
    x = images[:6].float() / 255
    x[0] = 0.5  # a flat image: every patch has zero variance
    values = torch.nn.functional.unfold(x, CONFIG.patch_size).transpose(1, 2).flatten(0, 1)
    centred = values - values.mean(1, keepdim=True)
    normalised = centred / (centred.var(1, keepdim=True) + 0.01).sqrt()
    expected = (normalised - model.patch_mean) @ model.zca
    got = model.whitened_patches(x)
    assert got.shape == expected.shape == (6 * (SIZE - CONFIG.patch_size + 1) ** 2, 75)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


def test_triangle_codes_equal_the_definition():
    generator = torch.Generator().manual_seed(0)
    z, atoms = torch.randn(500, 75, generator=generator), torch.randn(32, 75, generator=generator)
    z[0] = atoms[3]  # a patch on an atom: distance 0, where rounding could go negative
    distances = torch.cdist(z, atoms)
    expected = (distances.mean(1, keepdim=True) - distances).clamp(min=0)
    codes = triangle_codes(z, atoms)
    assert torch.allclose(codes, expected, atol=1e-4), (codes - expected).abs().max()
    assert 0.3 < (codes > 0).float().mean() < 0.7  # sparse, as the code is meant to be
    assert codes[0, 3] == codes[0].max()


def test_dictionary_picture(fitted, tmp_path):
    model, _, _, _ = fitted
    dictionary_png(tmp_path / "atoms.png", model=model)
    picture = PILImage.open(tmp_path / "atoms.png")
    assert picture.size == (16 * 32, 2 * 32)  # 32 atoms, 16 per row, 5 px zoomed 6x plus a border


def test_histograms_see_what_they_should():
    flat = torch.zeros(1, 3, SIZE, SIZE)
    vertical = torch.from_numpy(_stripes(vertical=True, period=4, colour=(0, 0, 0), seed=0))[None].float() / 255
    horizontal = vertical.transpose(2, 3)
    assert gradient_histograms(flat, cells=8).abs().sum() == 0
    assert not torch.allclose(gradient_histograms(vertical, cells=8), gradient_histograms(horizontal, cells=8))
    red, blue = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    assert colour_histograms(red, grid=1).argmax().item() == 3 * 16  # r=3, g=0, b=0
    assert colour_histograms(blue, grid=1).argmax().item() == 3
    assert colour_histograms(red, grid=1).sum().item() == pytest.approx(1.0)


def test_config_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="unknown architecture"):
        EncoderConfig(arch="resnet")
    with pytest.raises(ValueError, match="exceeds"):
        EncoderConfig(arch="patch_kmeans", dim=100_000)
    with pytest.raises(ValueError, match="multiple of hog_cells"):
        EncoderConfig(arch="patch_kmeans", image_size=36)
    with pytest.raises(ValueError, match="word_side 100 must be a multiple"):
        EncoderConfig(arch="patch_kmeans", word_side=100)
    with pytest.raises(ValueError, match="word_cells size 40"):
        EncoderConfig(arch="patch_kmeans", word_cells=(4, 40))
    default = EncoderConfig(arch="patch_kmeans")
    assert default.image_size == 32 and default.input_size == 128  # the gradient words see 128 px
    assert EncoderConfig(arch="patch_kmeans", gradient_words=0).input_size == 32
    assert EncoderConfig(arch="conv_ae").image_size == EncoderConfig(arch="conv_ae").input_size == 128


def test_labelled_split_is_stratified_disjoint_and_seeded():
    from workers.autoencoder.training import labelled_split

    labels = ["a"] * 10 + ["b"] * 5 + [""] * 3 + ["c"]
    train, held_out = labelled_split(labels=labels, held_out=0.3, seed=1)
    assert not set(train) & set(held_out)
    assert [labels[i] for i in held_out].count("a") == 3 and [labels[i] for i in held_out].count("b") == 2
    assert all(labels[i] for i in train + held_out)  # unlabelled images are in neither
    assert 18 in train and 18 not in held_out  # a label with one image cannot be held out
    assert labelled_split(labels=labels, held_out=0.3, seed=1) == (train, held_out)


def test_metric_learning_pulls_labels_together(fitted):
    from workers.autoencoder.patch_dictionary import batch_hard_triplet_loss, learn_projection_with_labels

    model, _, images, _ = fitted
    # A label the pictures do not show directly: the stripe period's parity (2,4,6 vs 3,5).
    labels = torch.tensor([(2 + seed % 5) % 2 for seed in range(40)])
    model = copy.deepcopy(model)  # the module-scoped fixture stays as fitted
    with torch.inference_mode():
        before = batch_hard_triplet_loss(model.encode(images.float() / 255), labels).item()
    losses = learn_projection_with_labels(model, images, labels, epochs=30, seed=0, device=torch.device("cpu"), show_progress=False)
    with torch.inference_mode():
        after = batch_hard_triplet_loss(model.encode(images.float() / 255), labels).item()
    assert len(losses) == 30 and losses[-1] < losses[0]
    assert after < before



def test_mutual_neighbour_pairs_match_a_brute_force_count():
    z = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    i, j = mutual_neighbour_pairs(z, k=4, block=7)  # blocks that do not divide the rows
    similarity = z @ z.T
    similarity.fill_diagonal_(-2)
    nearest = [set(row) for row in similarity.topk(4, dim=1).indices.tolist()]
    expected = {(a, b) for a in range(50) for b in nearest[a] if a < b and a in nearest[b]}
    assert set(zip(i.tolist(), j.tolist())) == expected and expected
    assert len(mutual_neighbour_pairs(z[:1], k=4)[0]) == 0  # one image has no neighbour


def _clusters(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """600 points of 40 features in 12 groups (centres with a standard deviation of 0.5 per
    feature, points 0.6 around them), all spread along the same 3 nuisance directions (standard
    deviation 4): what a near-duplicate changes (pose, lighting) varies more than what tells
    things apart. Plain PCA ranks about 0.6 of the 5 nearest in the same group."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, 40, generator=generator) * 0.5
    nuisance = torch.linalg.qr(torch.randn(40, 3, generator=generator))[0]  # (40, 3) orthonormal
    groups = torch.arange(600) % 12
    points = centres[groups] + 0.6 * torch.randn(600, 40, generator=generator)
    points += 4.0 * torch.randn(600, 3, generator=generator) @ nuisance.T
    return points - points.mean(0), groups


def _precision_at_5(z: torch.Tensor, groups: torch.Tensor) -> float:
    z = torch.nn.functional.normalize(z, dim=1)
    similarity = z @ z.T
    similarity.fill_diagonal_(-2)
    return (groups[similarity.topk(5, dim=1).indices] == groups[:, None]).float().mean().item()


def test_neighbour_whitening_divides_out_what_neighbours_share():
    centred, groups = _clusters(seed=0)
    start = torch.linalg.svd(centred, full_matrices=False)[2][:16].T  # plain PCA to 16
    projection, pairs = neighbour_whitening(centred, start=start, neighbours=10, seed=0)
    assert projection.shape == (40, 16) and pairs >= 40
    before, after = _precision_at_5(centred @ start, groups), _precision_at_5(centred @ projection, groups)
    assert after > before + 0.1, (before, after)
    # Fewer images than dimensions: the start projection comes back unchanged.
    small, _ = _clusters(seed=1)
    unchanged, none = neighbour_whitening(small[:12] - small[:12].mean(0), start=start, neighbours=10, seed=0)
    assert none == 0 and torch.equal(unchanged, start)


def test_orientation_maps_bin_signed_gradients():
    """A step from dark to light along x is orientation 0; along y, a quarter turn (bin 2); the
    opposite step, half a turn (bin 4). A flat picture has no gradient."""
    step = torch.zeros(1, 3, SIZE, SIZE)
    step[..., SIZE // 2 :] = 1.0
    for picture, expected in ((step, 0), (step.transpose(2, 3), 2), (1 - step, 4)):
        strength = orientation_maps(picture).sum(dim=(0, 2, 3))
        assert strength.argmax().item() == expected and strength[expected] > 0.99 * strength.sum()
    assert orientation_maps(torch.full((1, 3, SIZE, SIZE), 0.5)).abs().sum() == 0


@pytest.mark.parametrize("cells", [(4,), (4, 8)])
def test_gradient_words_equal_the_definition(fitted, cells, monkeypatch):
    """The encoder computes the descriptors' PCA with convolutions and the VLAD from sums and
    counts, one cell size at a time; they must equal the textbook route: unfold each 4x4 block of
    cells into a descriptor, L1-normalise and square-root it, centre and project it, find its
    nearest word by distance, sum the residuals per word over every cell size, signed square
    root, unit length per word. The nearest words are searched 100 descriptors at a time, the
    last block shorter."""
    monkeypatch.setattr(patch_dictionary, "WORD_SEARCH_ROWS", 100)
    model = copy.deepcopy(fitted[0])
    model.config = replace(CONFIG, word_cells=cells)
    images = fitted[2]
    x = images[:5].float() / 255
    x[0] = 0.5  # a flat picture: every descriptor is zero before centring
    maps = orientation_maps(x)
    descriptors = torch.cat([root_descriptors(word_cells(maps, cell=cell)).view(5, -1, 128) for cell in cells], 1)  # (B, L, 128)
    z = (descriptors - model.word_mean) @ model.word_pca
    got = torch.cat(model.projected_descriptors(x), 1)
    blocks = {(4,): 9 * 9, (4, 8): 9 * 9 + 1}[cells]  # 15x15 half cells of 4 px, 7x7 of 8 px: 9x9 and 1x1 blocks of 4x4
    assert got.shape == z.shape == (5, blocks, CONFIG.word_dim)
    assert torch.allclose(got, z, atol=1e-5), (got - z).abs().max()
    z = z.reshape(-1, CONFIG.word_dim)
    nearest = torch.cdist(z, model.words).argmin(1)
    per_image = (z - model.words[nearest]).view(5, -1, CONFIG.word_dim)
    expected = torch.zeros(5, CONFIG.gradient_words, CONFIG.word_dim)
    for i in range(5):
        expected[i].index_add_(0, nearest.view(5, -1)[i], per_image[i])
    expected = torch.nn.functional.normalize(expected.sign() * expected.abs().sqrt(), dim=2).flatten(1)
    with torch.inference_mode():
        vlad = model.word_vlad(x)
        raw = model.raw_blocks(x)
    assert torch.allclose(vlad, expected, atol=1e-4), (vlad - expected).abs().max()
    assert torch.allclose(raw[:, -CONFIG.gradient_words * CONFIG.word_dim :], vlad)  # the last block, not rooted again


def test_larger_input_feeds_the_other_blocks_its_reduction():
    """With ``word_side`` above ``image_size`` the encoder takes the larger picture; the blocks
    before the gradient words see it averaged down to ``image_size``. Pictures enlarged 2x (each
    pixel a 2x2 square) average back to themselves, so those blocks, and the dictionary fitted
    from the same seed, equal those of an encoder without words fitted on the small pictures."""
    images, _ = _collection()
    large = images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    config = replace(CONFIG, word_side=2 * SIZE, word_cells=(4, 8))
    assert config.input_size == 2 * SIZE
    model, _ = train_encoder_model(large, model_config=config, train_config=TRAIN, show_progress=False)
    plain, _ = train_encoder_model(images, model_config=replace(CONFIG, gradient_words=0), train_config=TRAIN, show_progress=False)
    assert torch.allclose(model.atoms, plain.atoms, atol=1e-5)
    with torch.inference_mode():
        raw = model.raw_blocks(large[:4].float() / 255)
        expected = plain.raw_blocks(images[:4].float() / 255)
        z = model.encode(large[:4].float() / 255)
    assert raw.shape[1] == expected.shape[1] + config.gradient_words * config.word_dim
    assert torch.allclose(raw[:, : expected.shape[1]], expected, atol=1e-5)
    assert z.shape == (4, 16) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
