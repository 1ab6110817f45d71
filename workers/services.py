"""The compute-heavy writes: decoding and embedding images, training encoders."""
from __future__ import annotations

import logging
import uuid
from typing import Callable

import numpy as np
import torch
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from PIL import Image as PILImage

from gallery import imaging
from gallery.models import Collection, Image
from gallery.services import image_mark_failed
from search.models import EncoderVersion, Embedding
from search.services import embeddings_store, encoder_promote, images_mark_indexed, images_missing_embedding
from workers.autoencoder.inference import EMBEDDING_BATCH_SIZE, load_embedder
from workers.autoencoder.model import AutoencoderConfig, save_checkpoint
from workers.autoencoder.preprocessing import Preprocess
from workers.autoencoder.training import TrainingConfig, train_autoencoder

logger = logging.getLogger(__name__)

# Decoded pictures are shrunk to this side right after the thumbnail is cut, so a batch of
# large photos costs megabytes, not gigabytes, while it waits for the encoder.
WORKING_SIDE = 512


def _read(image: Image) -> bytes:
    with image.file.open("rb") as handle:
        return handle.read()


def _decode_for_indexing(image: Image) -> PILImage.Image | None:
    """Decode one image, make its thumbnail if it has none; mark it failed and return None if it is bad."""
    if not image.file:
        image_mark_failed(image=image, reason="no stored file")
        return None
    try:
        picture = imaging.decode_rgb(_read(image))
    except imaging.ImageRejected as exc:
        image_mark_failed(image=image, reason=str(exc))
        return None
    except FileNotFoundError:
        image_mark_failed(image=image, reason="stored file is missing from media storage")
        return None
    if not image.thumbnail:
        image.thumbnail.save(
            "thumb.webp", ContentFile(imaging.thumbnail_webp(picture, size=settings.CBIR_THUMBNAIL_SIZE)), save=False
        )
        image.width, image.height = picture.size
        Image.objects.filter(pk=image.pk).update(thumbnail=image.thumbnail.name, width=image.width, height=image.height)
    picture.thumbnail((WORKING_SIDE, WORKING_SIDE), PILImage.Resampling.BILINEAR)
    return picture


def live_encoders() -> list[EncoderVersion]:
    """The encoders whose vectors must exist for every image: the active one and the one activating."""
    return list(
        EncoderVersion.objects.filter(status__in=[EncoderVersion.Status.ACTIVE, EncoderVersion.Status.ACTIVATING])
    )


def images_index(*, image_ids: list[int]) -> None:
    """Decode, thumbnail and embed the given images with every live encoder. Idempotent: safe to
    run twice, or after a crash halfway; failures are recorded per image and the rest goes on."""
    images = list(Image.objects.filter(id__in=image_ids).exclude(status=Image.Status.FAILED).order_by("id"))
    pictures: dict[int, PILImage.Image] = {}
    for image in images:
        picture = _decode_for_indexing(image)
        if picture is not None:
            pictures[image.id] = picture
    good = [image for image in images if image.id in pictures]
    for encoder in live_encoders():
        done = set(
            Embedding.objects.filter(encoder=encoder, image_id__in=pictures).values_list("image_id", flat=True)
        )
        todo = [image for image in good if image.id not in done]
        if not todo:
            continue
        embedder = load_embedder(encoder.checkpoint.path, device=settings.CBIR_DEVICE)
        vectors = embedder.embed([pictures[image.id] for image in todo])
        embeddings_store(encoder=encoder, images=todo, vectors=vectors)
    images_mark_indexed(image_ids=[image.id for image in good])


def encoder_backfill_step(*, encoder_id: int) -> bool:
    """Embed the next batch of images that lack a vector from this activating encoder.
    Returns True when there is nothing left to do (the encoder was promoted, or is not activating)."""
    encoder = EncoderVersion.objects.get(pk=encoder_id)
    if encoder.status != EncoderVersion.Status.ACTIVATING:
        return True
    batch = list(images_missing_embedding(encoder=encoder).values_list("id", flat=True)[:EMBEDDING_BATCH_SIZE])
    if batch:
        images_index(image_ids=batch)
        return False
    return encoder_promote(encoder=encoder) or not images_missing_embedding(encoder=encoder).exists()


def collection_load_pixels(*, collection: Collection, image_size: int) -> torch.Tensor:
    """Every decodable image of ``collection`` as a uint8 tensor (N, 3, S, S)."""
    preprocess = Preprocess(image_size)
    arrays = []
    for image in Image.objects.filter(collection=collection).exclude(status=Image.Status.FAILED).order_by("id"):
        try:
            picture = imaging.decode_rgb(_read(image))
        except (imaging.ImageRejected, FileNotFoundError, ValueError):
            continue  # the indexing path records the reason; training just leaves it out
        arrays.append(preprocess.to_uint8(picture))
    if not arrays:
        raise ValueError(f"collection {collection.name!r} has no decodable images to train on")
    return torch.from_numpy(np.stack(arrays))


def encoder_train(
    *,
    collection: Collection,
    model_config: AutoencoderConfig,
    train_config: TrainingConfig,
    name: str = "",
    show_progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> EncoderVersion:
    """Train an encoder on ``collection`` (no labels used) and store it as a new EncoderVersion
    with status ``trained``. A failure leaves the version ``failed`` with the reason."""
    if model_config.dim != settings.CBIR_EMBEDDING_DIM:
        raise ValueError(
            f"--dim {model_config.dim} differs from CBIR_EMBEDDING_DIM={settings.CBIR_EMBEDDING_DIM}, "
            "the width of the vector column"
        )
    encoder = EncoderVersion.objects.create(
        name=name or f"{model_config.arch} on {collection.name}",
        arch=model_config.arch,
        dim=model_config.dim,
        config={"model": model_config.to_dict(), "training": vars(train_config)},
        trained_on=collection,
        status=EncoderVersion.Status.TRAINING,
    )
    try:
        pixels = collection_load_pixels(collection=collection, image_size=model_config.image_size)

        def report(epoch: int, history: dict) -> None:
            EncoderVersion.objects.filter(pk=encoder.pk).update(metrics={"training": history})
            if on_epoch is not None:
                on_epoch(epoch, history)

        model, history = train_autoencoder(
            pixels, model_config=model_config, train_config=train_config, show_progress=show_progress, on_epoch=report
        )
        folder = settings.VAR_DIR / "encoders" / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        filename = f"encoder-{encoder.pk}-{uuid.uuid4().hex[:8]}.pt"
        save_checkpoint(folder / filename, model=model, config=model_config, extra={"history": history})
    except Exception as exc:
        EncoderVersion.objects.filter(pk=encoder.pk).update(status=EncoderVersion.Status.FAILED, error=str(exc)[:2000])
        raise
    with transaction.atomic():
        encoder.checkpoint.name = f"checkpoints/{filename}"
        encoder.metrics = {"training": history}
        encoder.status = EncoderVersion.Status.TRAINED
        encoder.save(update_fields=["checkpoint", "metrics", "status"])
    return encoder
