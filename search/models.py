from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.db import models
from django.db.models import Q
from pgvector.django import HnswIndex, VectorField

from gallery.models import validate_one_line_name

# Checkpoints are not public media: they live under var/encoders (a shared volume in compose).
def _encoder_storage() -> FileSystemStorage:
    return FileSystemStorage(location=settings.VAR_DIR / "encoders")


class EncoderVersion(models.Model):
    """One trained encoder. Exactly one is ``active``: search reads only its vectors."""

    class Status(models.TextChoices):
        TRAINING = "training", "training"
        TRAINED = "trained", "trained"
        ACTIVATING = "activating", "activating (re-embedding)"
        ACTIVE = "active", "active"
        RETIRED = "retired", "retired"
        FAILED = "failed", "failed"

    name = models.CharField(max_length=200, validators=[validate_one_line_name])
    arch = models.CharField(max_length=50)
    dim = models.PositiveIntegerField()
    config = models.JSONField(default=dict)
    checkpoint = models.FileField(storage=_encoder_storage, upload_to="checkpoints/", blank=True, max_length=300)
    trained_on = models.ForeignKey("gallery.Collection", null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRAINING, db_index=True)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    # Last sign of life of the re-embedding chain; the sweep restarts a chain that went quiet.
    progress_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="active"), name="one_active_encoder"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name} ({self.status})"


class Embedding(models.Model):
    """An image's vector under one encoder. ``collection`` is copied from the image so that
    collection filters need no join inside the index scan."""

    image = models.ForeignKey("gallery.Image", on_delete=models.CASCADE, related_name="embeddings")
    encoder = models.ForeignKey(EncoderVersion, on_delete=models.CASCADE, related_name="embeddings")
    collection = models.ForeignKey("gallery.Collection", on_delete=models.CASCADE, related_name="+")
    vector = VectorField(dimensions=settings.CBIR_EMBEDDING_DIM)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "encoder"], name="one_embedding_per_encoder")]
        indexes = [
            HnswIndex(
                name="embedding_vector_hnsw",
                fields=["vector"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
        ]
