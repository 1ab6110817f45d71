"""Changing CBIR_EMBEDDING_DIM on an existing database: resize_vectors follows it, in one transaction."""
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DataError, connection, transaction

from gallery.models import Collection, Image
from search.models import EncoderVersion, Embedding
from search.selectors import vector_column_dim
from tests.utils import vector

pytestmark = pytest.mark.django_db


def _indexed_world():
    encoder = EncoderVersion.objects.create(name="old width", arch="patch_kmeans", dim=256, status="active")
    collection = Collection.objects.create(name="resize")
    image = Image.objects.create(collection=collection, original_name="a", sha256="a", status="indexed")
    Embedding.objects.create(image=image, encoder=encoder, collection=collection, vector=vector((0, 1.0)))
    return encoder, collection, image


def test_same_width_is_a_no_op(capsys):
    assert vector_column_dim() == 256
    call_command("resize_vectors")
    assert "nothing to do" in capsys.readouterr().out


def test_resize_needs_confirmation_then_follows_the_setting(settings, capsys):
    encoder, collection, image = _indexed_world()
    settings.CBIR_EMBEDDING_DIM = 16
    with pytest.raises(CommandError, match="--delete-vectors"):
        call_command("resize_vectors")
    assert vector_column_dim() == 256 and Embedding.objects.count() == 1  # nothing changed

    call_command("resize_vectors", "--delete-vectors")
    assert vector_column_dim() == 16
    assert Embedding.objects.count() == 0
    assert EncoderVersion.objects.get(pk=encoder.pk).status == EncoderVersion.Status.RETIRED
    assert Image.objects.get(pk=image.pk).status == Image.Status.PENDING
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'embedding_vector_hnsw'")
        assert "hnsw" in cursor.fetchone()[0]

    fresh = EncoderVersion.objects.create(name="new width", arch="patch_kmeans", dim=16, status="active")
    Embedding.objects.create(image=image, encoder=fresh, collection=collection, vector=[1.0] * 16)
    with pytest.raises(DataError), transaction.atomic():
        Embedding.objects.create(image=image, encoder=encoder, collection=collection, vector=vector((0, 1.0)))


def test_training_refuses_a_width_that_the_column_does_not_have(settings):
    from workers.autoencoder.model import EncoderConfig
    from workers.autoencoder.training import TrainingConfig
    from workers.services import encoder_plan

    collection = Collection.objects.create(name="narrow")
    with pytest.raises(ValueError, match="resize_vectors"):
        encoder_plan(collection=collection, model_config=EncoderConfig(arch="patch_kmeans", dim=16), train_config=TrainingConfig())
    settings.CBIR_EMBEDDING_DIM = 16  # the setting changed, the column not yet
    with pytest.raises(ValueError, match="run manage.py resize_vectors first"):
        encoder_plan(collection=collection, model_config=EncoderConfig(arch="patch_kmeans", dim=16), train_config=TrainingConfig())
