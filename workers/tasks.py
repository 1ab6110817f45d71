"""Celery tasks: ids in, a service call, retries on transient errors."""
from celery import shared_task
from django.db import InterfaceError, OperationalError

TRANSIENT_ERRORS = (OperationalError, InterfaceError)


@shared_task(acks_late=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=8)
def index_images(image_ids: list[int]) -> None:
    from workers.services import images_index

    images_index(image_ids=image_ids)


@shared_task(acks_late=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=8)
def backfill_embeddings(encoder_id: int) -> None:
    """One batch of re-embedding per run, then re-enqueue: long backfills never hold a worker for hours
    and survive restarts."""
    from workers.services import encoder_backfill_step

    if not encoder_backfill_step(encoder_id=encoder_id):
        backfill_embeddings.delay(encoder_id)


@shared_task(acks_late=False)
def train_encoder(collection_id: int, *, epochs: int = 15, image_size: int = 128, seed: int = 0, activate: bool = True) -> int:
    """Train on a collection and (optionally) activate. Not acked late: a training run killed halfway
    is not silently restarted."""
    from django.conf import settings

    from gallery.models import Collection
    from search.services import encoder_activate
    from workers.autoencoder.model import AutoencoderConfig
    from workers.autoencoder.training import TrainingConfig
    from workers.services import encoder_train

    encoder = encoder_train(
        collection=Collection.objects.get(pk=collection_id),
        model_config=AutoencoderConfig(image_size=image_size, dim=settings.CBIR_EMBEDDING_DIM),
        train_config=TrainingConfig(epochs=epochs, seed=seed, device=settings.CBIR_DEVICE),
        show_progress=False,
    )
    if activate:
        encoder_activate(encoder=encoder)
    return encoder.pk
