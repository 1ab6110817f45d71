import numpy as np
import pytest
import torch

from workers.autoencoder.inference import load_embedder
from workers.autoencoder.model import EncoderConfig, build_model, load_checkpoint, save_checkpoint
from workers.autoencoder.preprocessing import Preprocess
from workers.autoencoder.training import TrainingConfig, train_autoencoder
from PIL import Image as PILImage


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def test_seed_recipe_shapes():
    model = build_model(EncoderConfig())  # 128x128x3 in, 256-d bottleneck
    x = torch.rand(2, 3, 128, 128)
    reconstruction, z = model(x)
    assert z.shape == (2, 256)
    assert reconstruction.shape == x.shape
    assert 0.0 <= reconstruction.min().item() and reconstruction.max().item() <= 1.0


def test_image_size_must_fit_the_downsampling():
    with pytest.raises(ValueError, match="multiple of 16"):
        EncoderConfig(image_size=100)


def test_training_lowers_the_loss_and_is_reproducible():
    images = _images(24, 32)
    config = EncoderConfig(image_size=32, dim=16, widths=(8, 16))
    train = TrainingConfig(epochs=4, batch_size=8, seed=7, device="cpu")
    model_a, history_a = train_autoencoder(images, model_config=config, train_config=train, show_progress=False)
    model_b, history_b = train_autoencoder(images, model_config=config, train_config=train, show_progress=False)
    assert history_a["train_loss"][-1] < history_a["train_loss"][0]
    assert history_a["train_loss"] == history_b["train_loss"]
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)


def test_max_minutes_stops_after_the_first_epoch():
    config = EncoderConfig(image_size=32, dim=8, widths=(4, 8))
    _, history = train_autoencoder(
        _images(8, 32),
        model_config=config,
        train_config=TrainingConfig(epochs=50, batch_size=4, device="cpu", max_minutes=0.0),
        show_progress=False,
    )
    assert history["epochs_run"] == 1


def test_checkpoint_rebuilds_the_same_encoder(tmp_path):
    config = EncoderConfig(image_size=32, dim=8, widths=(4, 8))
    model = build_model(config).eval()
    path = tmp_path / "encoder.pt"
    save_checkpoint(path, model=model, config=config)
    loaded, loaded_config = load_checkpoint(path)
    x = torch.rand(3, 3, 32, 32)
    assert loaded_config == config
    with torch.inference_mode():
        assert torch.allclose(model.encode(x), loaded.encode(x))

    embedder = load_embedder(path, device="cpu")
    pictures = [PILImage.new("RGB", (50, 20), (255, 0, 0)), PILImage.new("RGB", (20, 20), (0, 0, 255))]
    vectors = embedder.embed(pictures)
    assert vectors.shape == (2, 8) and vectors.dtype == np.float32
    expected = loaded.encode(torch.stack([Preprocess(32)(p) for p in pictures]))
    assert np.allclose(vectors, expected.detach().numpy(), atol=1e-5)


def test_preprocess_pads_to_square_on_white():
    tensor = Preprocess(16)(PILImage.new("RGB", (32, 16), (0, 0, 0)))
    assert tensor.shape == (3, 16, 16)
    assert tensor[:, 0, 8].tolist() == [1.0, 1.0, 1.0]  # top padding row is white
    assert tensor[:, 8, 8].tolist() == [0.0, 0.0, 0.0]  # centre is the black picture
