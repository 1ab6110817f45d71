"""The compute-heavy writes: decoding and embedding images, training encoders."""
from __future__ import annotations

import logging
import os
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import numpy as np
import torch
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Case, F, Q, TextField, Value, When
from django.db.models.functions import Concat
from django.utils import timezone
from PIL import Image as PILImage

from gallery import imaging
from gallery.media import MediaStorageUnavailable, media_storage_check
from gallery.models import Collection, Image, checked_for_field
from gallery.services import file_store, image_mark_failed, images_record_thumbnails, stored_files_delete
from search.models import EncoderVersion, Embedding
from search.services import embeddings_store, encoder_promote, images_mark_indexed, images_missing_embedding
from workers.autoencoder.artifacts import dictionary_png, loss_curve_png, reconstruction_png
from workers.autoencoder.inference import EMBEDDING_BATCH_SIZE, load_embedder
from workers.autoencoder.model import DEFAULT_ARCH, EncoderConfig, save_checkpoint
from workers.autoencoder.patch_dictionary import learn_projection_with_labels
from workers.autoencoder.preprocessing import Preprocess
from workers.autoencoder.training import TrainingConfig, labelled_split, pick_device, train_encoder_model
from workers.tasks import MEDIA_ERRORS

logger = logging.getLogger(__name__)

# At most this many images are re-queued by one sweep; the next sweep takes the rest.
SWEEP_MAX_IMAGES = 10_000

# Threads decoding the next images while the encoder runs on the current batch (Pillow's
# decoders release the GIL). More than the cores only adds memory.
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclass
class _Decoded:
    picture: PILImage.Image | None = None
    thumbnail: bytes | None = None
    signature: list[float] | None = None  # made with the thumbnail, recorded with it
    error: str = ""


def _decode_job(name: str, *, make_thumbnail: bool) -> _Decoded:
    """Pure CPU and file work, safe in a thread: no database access here."""
    if not name:
        return _Decoded(error="no stored file")
    try:
        with default_storage.open(name, "rb") as handle:
            data = handle.read()
        picture = imaging.decode_for_encoder(data)
    except imaging.ImageRejected as exc:
        return _Decoded(error=str(exc))
    except FileNotFoundError:
        return _Decoded(error="stored file is missing from media storage")
    thumbnail = imaging.thumbnail_webp(picture, size=settings.CBIR_THUMBNAIL_SIZE) if make_thumbnail else None
    # shrunk right after the thumbnail is cut: a batch of large photos waiting for the encoder
    # costs megabytes, not gigabytes (the resize keeps ``info``: the full size and the profile)
    picture = imaging.fit_within(picture, imaging.WORKING_SIDE)
    signature = imaging.copy_signature(picture) if make_thumbnail else None
    return _Decoded(picture=picture, thumbnail=thumbnail, signature=signature)


def _store_thumbnails(pairs: list[tuple[Image, _Decoded]]) -> set[int]:
    """Write the thumbnail files, then record them (and each picture's size as decoded) in one UPDATE. If either
    fails (a full disk, the database gone), the files written are removed again and the error goes
    on: the images stay pending, and the task's retry or the sweep makes their thumbnails later."""
    written = []
    try:
        for image, decoded in pairs:
            file_store(image.thumbnail, "thumb.webp", data=decoded.thumbnail)
            written.append(image.thumbnail.name)
            image.width, image.height = decoded.picture.info["full_size"]
            image.signature = decoded.signature
        recorded = images_record_thumbnails(images=[image for image, _ in pairs])
    except BaseException:
        stored_files_delete(written)
        raise
    # An image deleted while it was being indexed: its new thumbnail would have no row.
    stored_files_delete(image.thumbnail.name for image, _ in pairs if image.id not in recorded)
    return recorded


def live_encoders() -> list[EncoderVersion]:
    """The encoders whose vectors must exist for every image: the active one and the one activating."""
    return list(
        EncoderVersion.objects.filter(status__in=[EncoderVersion.Status.ACTIVE, EncoderVersion.Status.ACTIVATING])
    )


def _encoder_load(encoder: EncoderVersion):
    """The embedder of ``encoder``; if its checkpoint cannot be loaded here (deleted, corrupt, or on
    a volume this worker lacks), that is recorded as the encoder's error and the error goes on."""
    try:
        return load_embedder(encoder.checkpoint.path, device=settings.CBIR_DEVICE)
    except Exception as exc:
        _encoder_record_error(encoder, f"could not load its checkpoint: {type(exc).__name__}: {exc}")
        raise


def _encoder_record_error(encoder: EncoderVersion, reason: str) -> None:
    """Shown in the admin beside the encoder until it is promoted."""
    logger.error("encoder %s: %s", encoder.pk, reason)
    EncoderVersion.objects.filter(pk=encoder.pk).update(error=reason[:2000])


def _embed_batch(batch: list[tuple[Image, PILImage.Image]], encoders: list[EncoderVersion]) -> None:
    ids = [image.id for image, _ in batch]
    for encoder in encoders:
        done = set(Embedding.objects.filter(encoder=encoder, image_id__in=ids).values_list("image_id", flat=True))
        todo = [(image, picture) for image, picture in batch if image.id not in done]
        if not todo:
            continue
        try:
            embedder = _encoder_load(encoder)
        except Exception:
            # The images are not the cause. Those waiting for the active encoder keep waiting
            # (the error goes on); an activating encoder's re-embedding gives them its vectors later.
            if encoder.status == EncoderVersion.Status.ACTIVATING:
                continue
            raise
        vectors = embedder.embed([picture for _, picture in todo])
        embeddings_store(encoder=encoder, images=[image for image, _ in todo], vectors=vectors)
    # These attempts finished: the indexed ones' counts went back to 0 in the same UPDATE; this one
    # finds those re-embedded while indexed or still waiting for an active encoder.
    images_mark_indexed(image_ids=ids)
    Image.objects.filter(id__in=ids, attempts__gt=0).update(attempts=0)


def images_index(*, image_ids: list[int], encoders: list[EncoderVersion] | None = None) -> None:
    """Decode, thumbnail and embed the given images with every live encoder (or with ``encoders``).

    Decoding runs in a thread pool ahead of the encoder, which takes ``EMBEDDING_BATCH_SIZE``
    images at a time. Idempotent: safe to run twice, or again after a crash halfway; a bad
    image is marked failed with its reason and the rest goes on.
    """
    media_storage_check()  # else every file would read as missing, and every image would be failed
    images = list(Image.objects.filter(id__in=image_ids).exclude(status=Image.Status.FAILED).order_by("id"))
    encoders = live_encoders() if encoders is None else encoders
    with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode") as pool:
        futures = [pool.submit(_decode_job, image.file.name, make_thumbnail=not image.thumbnail) for image in images]
        for start in range(0, len(images), EMBEDDING_BATCH_SIZE):
            batch, thumbnails = [], []
            for index in range(start, min(start + EMBEDDING_BATCH_SIZE, len(images))):
                image, decoded = images[index], futures[index].result()
                futures[index] = None  # the decoded picture is freed once its batch is embedded
                if decoded.error:
                    image_mark_failed(image=image, reason=decoded.error)
                    continue
                if decoded.thumbnail:
                    thumbnails.append((image, decoded))
                batch.append((image, decoded.picture))
            if thumbnails:
                _store_thumbnails(thumbnails)
            if batch:
                _embed_batch(batch, encoders)


# An image whose indexing was started this many times without finishing is marked failed instead
# of being tried again. A file that kills the worker process (a decoder crash, memory running out,
# the task's time limit) comes back at once with its request (a killed worker's message is
# delivered again: CELERY_TASK_REJECT_ON_WORKER_LOST) or with the next sweep, and one that raises
# comes back with each sweep; without a limit either would be tried for ever, holding up every image
# queued with it, or an encoder's activation for good.
MAX_INDEX_ATTEMPTS = 3
GIVEN_UP_REASON = (
    f"indexing was started {MAX_INDEX_ATTEMPTS} times and never finished (the worker crashed, ran out of memory "
    "or time, or hit an error on this file), so it is left out"
)


def images_index_request(*, image_ids: list[int], counted: bool = True) -> None:
    """Index the images of one request (a queued message), as an attempt on each of them.

    An image that a worker started before and never finished (``attempts`` above 0) may be what
    stopped it, so, in a request for several images, it is split off and queued on its own: the
    others are not held up by it, and a file that stops every worker is soon tried alone. One
    started ``MAX_INDEX_ATTEMPTS`` times is marked failed, with the last error if there was one.
    ``counted`` is False for the task's retries after a transient database error, which are not
    new attempts. Any other error is recorded on the images still pending (their reason until
    they are indexed), those are queued again one by one when the request held several, and the
    error goes on to the task, which logs it.

    Only the request's pending images are worked on: the others were indexed (or failed) since it
    was queued, as when the sweep queued an image again while its first request waited in a long
    queue, or when a request is delivered again after a killed worker. They cost one query."""
    image_ids = list(Image.objects.filter(id__in=image_ids, status=Image.Status.PENDING).order_by("id").values_list("id", flat=True))
    if image_ids:
        _media_storage_wait(image_ids)
    if counted:
        tried = _images_give_up_on_tried(image_ids)
        if len(image_ids) > 1 and tried:
            from gallery.services import images_enqueue

            images_enqueue(tried, per_request=1)
            alone = set(tried)
            image_ids = [image_id for image_id in image_ids if image_id not in alone]
        _images_count_attempt(image_ids)
    try:
        images_index(image_ids=image_ids)
    except MEDIA_ERRORS:
        raise
    except Exception as exc:
        _images_record_stopped_attempt(image_ids, exc)
        raise


def _media_storage_wait(image_ids: list[int]) -> None:
    """Raise ``MediaStorageUnavailable`` where this worker lacks the media volume, before any
    attempt is counted: the images are not the cause. They stay pending with the reason shown, and
    the task's retries (which another worker may take) or the sweep bring them back."""
    try:
        media_storage_check()
    except MediaStorageUnavailable as exc:
        logger.error("%s", exc)
        Image.objects.filter(id__in=image_ids, status=Image.Status.PENDING).update(error=f"waiting: {exc}"[:2000])
        raise


def _images_give_up_on_tried(image_ids: list[int]) -> list[int]:
    """Mark failed the images among ``image_ids`` started ``MAX_INDEX_ATTEMPTS`` times without
    finishing; return the other unfinished ones (started before, not finished), in id order."""
    live = Image.objects.filter(id__in=image_ids).exclude(status=Image.Status.FAILED)
    live.filter(attempts__gte=MAX_INDEX_ATTEMPTS).update(
        status=Image.Status.FAILED,
        error=Case(
            When(error="", then=Value(GIVEN_UP_REASON)),
            default=Concat(Value(GIVEN_UP_REASON + "; "), F("error")),
            output_field=TextField(),
        ),
    )
    return sorted(live.filter(attempts__gt=0).values_list("id", flat=True))


def _images_count_attempt(image_ids: list[int]) -> None:
    """Count an attempt on these images, committed before any work on them starts, so that a
    killed worker leaves it counted. ``_embed_batch`` sets it back to 0 once they are done."""
    Image.objects.filter(id__in=image_ids).exclude(status=Image.Status.FAILED).update(attempts=F("attempts") + 1)


def _images_record_stopped_attempt(image_ids: list[int], exc: Exception) -> None:
    """Record why an attempt stopped on the images it left pending, and queue them again one by
    one if there were several (which of them raised is not known). Best effort: the error itself
    may be the database's."""
    from gallery.services import images_enqueue

    try:
        still = Image.objects.filter(id__in=image_ids, status=Image.Status.PENDING)
        still.update(error=f"the last attempt stopped: {type(exc).__name__}: {exc}"[:2000])
        if len(image_ids) > 1:
            images_enqueue(sorted(still.values_list("id", flat=True)), per_request=1)
    except Exception:
        logger.exception("could not record the error that stopped indexing images %s", image_ids[:10])


def images_rebuild_thumbnails(*, image_ids: list[int]) -> tuple[int, list[tuple[int, str]]]:
    """Make the thumbnails of these images again, and record their sizes and copy signatures
    again, as indexing makes them now: for images indexed before a change to any of them (sizes as
    shown, colour profiles converted to sRGB, signatures). The vectors are left as they are. The
    old thumbnail files are removed once the new ones are recorded. Returns how many were rebuilt,
    and (id, reason) for each image whose file no longer decodes: it keeps its thumbnail and status
    (its vector still holds)."""
    # indexed images only: a pending one gets its thumbnail from the worker that indexes it
    images = list(Image.objects.filter(id__in=image_ids, status=Image.Status.INDEXED).exclude(file="").order_by("id"))
    with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode") as pool:
        decoded = list(pool.map(lambda image: _decode_job(image.file.name, make_thumbnail=True), images))
    pairs = [(image, job) for image, job in zip(images, decoded) if not job.error]
    unreadable = [(image.id, job.error) for image, job in zip(images, decoded) if job.error]
    old_names = {image.id: image.thumbnail.name for image, _ in pairs}
    recorded = _store_thumbnails(pairs)
    stored_files_delete(old_names[image_id] for image_id in recorded)
    return len(recorded), unreadable


def encoder_embed_collection(*, encoder: EncoderVersion, collection: Collection) -> int:
    """Give every image of ``collection`` a vector from ``encoder`` (any status but failed), so that
    encoders can be compared through the same ranking path. Returns how many were embedded."""
    if not encoder.checkpoint:
        raise ValueError(f"encoder {encoder} has no checkpoint")
    missing = list(
        Image.objects.filter(collection=collection)
        .exclude(status=Image.Status.FAILED)
        .exclude(embeddings__encoder=encoder)
        .values_list("id", flat=True)
    )
    for start in range(0, len(missing), 256):
        images_index(image_ids=missing[start : start + 256], encoders=[encoder])
    return len(missing)


def pending_sweep(*, older_than: timedelta) -> int:
    """Queue again the pending images whose indexing request is older than ``older_than`` (a lost
    message, a worker killed mid-batch, a broker that was down at upload), and restart re-embedding
    chains that went quiet. Images merely waiting for a first encoder are left alone.
    Returns how many images were queued."""
    from gallery.services import images_enqueue, task_send_safely
    from workers.tasks import backfill_embeddings

    cutoff = timezone.now() - older_than
    stale = Image.objects.filter(status=Image.Status.PENDING).filter(Q(queued_at__lt=cutoff) | Q(queued_at__isnull=True))
    if not live_encoders():
        stale = stale.filter(thumbnail="")
    with transaction.atomic():
        ids = list(stale.order_by("id").values_list("id", flat=True)[:SWEEP_MAX_IMAGES])
        images_enqueue(ids)
    quiet = EncoderVersion.objects.filter(status=EncoderVersion.Status.ACTIVATING).filter(
        Q(progress_at__lt=cutoff) | Q(progress_at__isnull=True)
    )
    for encoder_id in list(quiet.values_list("id", flat=True)):
        EncoderVersion.objects.filter(pk=encoder_id).update(progress_at=timezone.now())
        task_send_safely(backfill_embeddings, encoder_id)
    return len(ids)


def encoder_backfill_step(*, encoder_id: int) -> bool:
    """Embed the next batch of images that lack a vector from this activating encoder.
    Returns True when there is nothing left to do (the encoder was promoted, or is not activating)."""
    encoder = EncoderVersion.objects.get(pk=encoder_id)
    if encoder.status != EncoderVersion.Status.ACTIVATING:
        return True
    EncoderVersion.objects.filter(pk=encoder_id).update(progress_at=timezone.now())
    batch = list(images_missing_embedding(encoder=encoder).values_list("id", flat=True)[:EMBEDDING_BATCH_SIZE])
    if batch:
        # An encoder that cannot be loaded, or a worker without the media volume, stops here, before
        # any attempt is counted on the images: they are not the cause, and giving up on them would
        # fail images that search finds now.
        try:
            media_storage_check()
        except MediaStorageUnavailable as exc:
            _encoder_record_error(encoder, f"re-embedding waits: {exc}")
            raise
        _encoder_load(encoder)
        # A step that never finished (a killed worker, the time limit) left its images' attempts
        # counted, and the chain, restarted by the sweep, gets the same batch: its images are then
        # taken one per step, and one that stops every step is given up on.
        tried = _images_give_up_on_tried(batch)
        batch = tried[:1] or batch
        _images_count_attempt(batch)
        try:
            images_index(image_ids=batch)
        except MEDIA_ERRORS:
            raise
        except Exception as exc:
            shown = ", ".join(map(str, batch[:10])) + (", ..." if len(batch) > 10 else "")
            _encoder_record_error(encoder, f"re-embedding stopped on images {shown}: {type(exc).__name__}: {exc}")
            raise
        return False
    return encoder_promote(encoder=encoder) or not images_missing_embedding(encoder=encoder).exists()


def _read(image: Image) -> bytes:
    with image.file.open("rb") as handle:
        return handle.read()


@dataclass
class CollectionPixels:
    image_ids: list[int]
    labels: list[str]  # "" where an image has none
    pixels: torch.Tensor  # uint8 (N, 3, S, S)


# A label-free patch_kmeans fits on at most this many of the collection's images, drawn at random
# (seeded): its PCA sees 10,000 of them (PROJECTION_IMAGES) and its k-means 100,000 patches, so
# more would only cost decoding time and memory (48 KB an image at its 128 px input: 0.96 GB
# here, against 48 GB for a collection of a million).
PATCH_KMEANS_TRAINING_IMAGES = 20_000


def collection_load_pixels(*, collection: Collection, image_size: int, limit: int | None = None, seed: int = 0) -> CollectionPixels:
    """Every decodable image of ``collection``, preprocessed to ``image_size``, with its id and
    label; with ``limit``, only that many of them, drawn at random with ``seed`` (in id order)."""
    preprocess = Preprocess(image_size)
    ids, labels, arrays = [], [], []
    candidates = Image.objects.filter(collection=collection).exclude(status=Image.Status.FAILED)
    if limit is not None:
        every = list(candidates.order_by("id").values_list("id", flat=True))
        if len(every) > limit:
            candidates = candidates.filter(id__in=sorted(random.Random(seed).sample(every, limit)))
    for image in candidates.order_by("id"):
        try:
            picture = imaging.decode_for_encoder(_read(image))
        except (imaging.ImageRejected, FileNotFoundError, ValueError):
            continue  # the indexing path records the reason; training just leaves it out
        ids.append(image.id)
        labels.append(image.label)
        arrays.append(preprocess.to_uint8(picture))
    if not arrays:
        raise ValueError(f"collection {collection.name!r} has no decodable images to train on")
    return CollectionPixels(image_ids=ids, labels=labels, pixels=torch.from_numpy(np.stack(arrays)))


def _learn_with_labels(model, loaded: CollectionPixels, train_config: TrainingConfig, *, show_progress: bool) -> dict:
    train, held_out = labelled_split(labels=loaded.labels, held_out=train_config.held_out, seed=train_config.seed)
    names = sorted({loaded.labels[i] for i in train})
    if len(names) < 2:
        raise ValueError("--use-labels needs at least two labels with images left to train on")
    losses = learn_projection_with_labels(
        model,
        loaded.pixels[train],
        torch.tensor([names.index(loaded.labels[i]) for i in train]),
        epochs=train_config.epochs,
        seed=train_config.seed,
        device=pick_device(train_config.device),
        show_progress=show_progress,
    )
    return {
        "metric_loss": losses,
        "labelled_training_images": len(train),
        # evaluate scores this encoder on these images only, never on the ones it learned from
        "held_out_image_ids": [loaded.image_ids[i] for i in held_out],
    }


def encoder_plan(
    *, collection: Collection, model_config: EncoderConfig, train_config: TrainingConfig, name: str = ""
) -> EncoderVersion:
    """Record a training run to be done (status ``training``), so the admin sees it at once."""
    if train_config.use_labels and model_config.arch != "patch_kmeans":
        raise ValueError("--use-labels trains the projection of patch_kmeans; use --arch patch_kmeans")
    if not 0 < train_config.held_out < 1:
        raise ValueError("--held-out must be between 0 and 1")
    if train_config.epochs < 1 or train_config.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be at least 1")
    if not train_config.learning_rate > 0 or not (train_config.max_minutes is None or train_config.max_minutes > 0):
        raise ValueError("--lr and --max-minutes must be above 0")
    if train_config.device != "auto":
        try:
            torch.device(train_config.device)
        except RuntimeError:
            raise ValueError(f"--device {train_config.device!r} names no device: auto, cpu, cuda, cuda:1 ...") from None
    from search.selectors import vector_column_dim

    if model_config.dim != settings.CBIR_EMBEDDING_DIM:
        raise ValueError(
            f"--dim {model_config.dim} differs from CBIR_EMBEDDING_DIM={settings.CBIR_EMBEDDING_DIM}; to change "
            "the width, set CBIR_EMBEDDING_DIM and run manage.py resize_vectors"
        )
    column_dim = vector_column_dim()
    if column_dim != model_config.dim:
        raise ValueError(
            f"the vector column is {column_dim} wide but CBIR_EMBEDDING_DIM is {model_config.dim}: "
            "run manage.py resize_vectors first"
        )
    if model_config.arch != "patch_kmeans" and not model_config.gradient_words:
        raise ValueError("--no-gradient-words leaves out a block of patch_kmeans; use --arch patch_kmeans")
    arch_named = model_config.arch if model_config.gradient_words else f"{model_config.arch} without gradient words"
    return EncoderVersion.objects.create(
        name=_encoder_name(name, arch=arch_named, collection=collection),
        arch=model_config.arch,
        dim=model_config.dim,
        config={"model": model_config.to_dict(), "training": vars(train_config)},
        trained_on=collection,
        status=EncoderVersion.Status.TRAINING,
    )


def _encoder_name(name: str, *, arch: str, collection: Collection) -> str:
    """The name given (``train_encoder --name``), checked as the admin checks it, or "ARCH on
    COLLECTION", shortened with an ellipsis where a long collection name would not fit the column."""
    field = EncoderVersion._meta.get_field("name")
    name = name.strip()
    if not name:
        name = f"{arch} on {collection.name}"
        return name if len(name) <= field.max_length else name[: field.max_length - 1] + "\N{HORIZONTAL ELLIPSIS}"
    try:
        return checked_for_field(field, name, what="an encoder's name")
    except ValueError as exc:
        raise ValueError(f"--name: {exc}") from exc


def encoder_train(
    *,
    encoder: EncoderVersion,
    show_progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> EncoderVersion:
    """Train a planned encoder on its collection, store the checkpoint with a loss-curve PNG (and a
    reconstruction preview for autoencoders, the learned atoms for the patch dictionary) beside it,
    and mark it ``trained``. No labels are used unless the plan says ``use_labels``: then the
    label-free encoder's projection is trained further on the labelled images, except a held-out
    share whose ids are kept for evaluation. A failure leaves it ``failed`` with the reason."""
    collection = encoder.trained_on
    model_config = EncoderConfig(**encoder.config["model"])
    train_config = TrainingConfig(**encoder.config["training"])
    try:
        sampled = model_config.arch == "patch_kmeans" and not train_config.use_labels
        loaded = collection_load_pixels(
            collection=collection, image_size=model_config.input_size,
            limit=PATCH_KMEANS_TRAINING_IMAGES if sampled else None, seed=train_config.seed,
        )
        pixels = loaded.pixels

        def report(epoch: int, history: dict) -> None:
            EncoderVersion.objects.filter(pk=encoder.pk).update(metrics={"training": history})
            if on_epoch is not None:
                on_epoch(epoch, history)

        model, history = train_encoder_model(
            pixels, model_config=model_config, train_config=train_config, show_progress=show_progress, on_epoch=report
        )
        if train_config.use_labels:
            history.update(_learn_with_labels(model, loaded, train_config, show_progress=show_progress))
        folder = settings.VAR_DIR / "encoders" / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"encoder-{encoder.pk}-{uuid.uuid4().hex[:8]}"
        filename = f"{stem}.pt"
        save_checkpoint(folder / filename, model=model, config=model_config, extra={"history": history})
        history["artifacts"] = {"loss_curve": f"checkpoints/{stem}-loss.png"}
        loss_curve_png(folder / f"{stem}-loss.png", history=history)
        if model.objective == "reconstruction":
            reconstruction_png(folder / f"{stem}-reconstructions.png", model=model, images=pixels)
            history["artifacts"]["reconstructions"] = f"checkpoints/{stem}-reconstructions.png"
        else:
            dictionary_png(folder / f"{stem}-dictionary.png", model=model)
            history["artifacts"]["dictionary"] = f"checkpoints/{stem}-dictionary.png"
    except Exception as exc:
        EncoderVersion.objects.filter(pk=encoder.pk).update(status=EncoderVersion.Status.FAILED, error=str(exc)[:2000])
        raise
    with transaction.atomic():
        encoder.checkpoint.name = f"checkpoints/{filename}"
        encoder.metrics = {"training": history}
        encoder.status = EncoderVersion.Status.TRAINED
        encoder.save(update_fields=["checkpoint", "metrics", "status"])
    return encoder


def encoder_queue_training(
    *, collection: Collection, epochs: int = 15, arch: str = DEFAULT_ARCH, image_size: int | None = None, activate: bool = True,
    gradient_words: bool = True,
) -> EncoderVersion:
    """Plan a training run with default settings for ``arch`` and hand it to a worker (after commit).
    ``gradient_words=False``: patch_kmeans without its bag of gradient words, on 32 px pictures,
    about a quarter of the encoder's time on a CPU for less precise results (README, limits)."""
    from workers.tasks import train_encoder

    model_config = EncoderConfig(
        arch=arch, dim=settings.CBIR_EMBEDDING_DIM, **({"image_size": image_size} if image_size else {}),
        **({} if gradient_words else {"gradient_words": 0}),
    )
    encoder = encoder_plan(
        collection=collection,
        model_config=model_config,
        train_config=TrainingConfig(epochs=epochs, device=settings.CBIR_DEVICE),
    )

    def send() -> None:
        try:
            train_encoder.apply_async(args=(encoder.pk,), kwargs={"activate": activate}, retry=False)
        except Exception as exc:  # the broker is down: no sweep starts a training, so it is failed with the reason
            logger.warning("could not queue the training of encoder %s (%s)", encoder.pk, exc)
            EncoderVersion.objects.filter(pk=encoder.pk, status=EncoderVersion.Status.TRAINING).update(
                status=EncoderVersion.Status.FAILED,
                error=f"the training could not be queued, as the task broker (Redis) did not answer ({exc}); start it again",
            )

    transaction.on_commit(send)
    return encoder
