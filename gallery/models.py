import unicodedata
import uuid
from pathlib import PurePath

from django.core.exceptions import ValidationError
from django.contrib.postgres.fields import ArrayField
from django.db import models
from pgvector.django import HalfVectorField, HnswIndex

from gallery.imaging import SIGNATURE_DIM


def validate_one_line_name(value: str) -> None:
    """A name shown in lists, links and a terminal: no control characters (NUL, tab, line breaks,
    escapes), which would be invisible or break its line, and no lone surrogates (Python's stand-in
    for bytes that are not UTF-8 in a command-line argument), which cannot be stored. Emoji joiners
    and other format characters stay allowed."""
    _refuse_unsafe(value, "a name")


def validate_one_line_label(value: str) -> None:
    """A label, edited in the admin, as ``validate_one_line_name`` checks a name: imports write
    such characters as escapes (``one_line``) before they store a label."""
    _refuse_unsafe(value, "a label")


def checked_for_field(field: models.CharField, value: str, *, what: str) -> str:
    """``value``, refused as the admin's form would refuse it for ``field``: a ValueError when it is
    longer than the field's ``max_length`` ("WHAT has at most N characters") or fails one of its
    validators (that validator's message). For names that come from elsewhere than a form."""
    if len(value) > field.max_length:
        raise ValueError(f"{what} has at most {field.max_length} characters")
    try:
        field.run_validators(value)
    except ValidationError as exc:
        raise ValueError(exc.messages[0]) from exc
    return value


def _refuse_unsafe(value: str, what: str) -> None:
    if _holds_unsafe(value):
        raise ValidationError(
            f"{what} cannot hold control characters (NUL, tabs, line breaks, escapes) or bytes that are not UTF-8"
        )


def one_line(value: str) -> str:
    """``value`` safe to store, log and print to a terminal. A byte that was not UTF-8 in a name on
    disk (Python reads it as a lone surrogate, which PostgreSQL cannot store) becomes the Latin-1
    character it stands for, the likeliest reading (an old camera's or share's ``café``); then each
    control character is written out as its escape (a line break as ``\\n``, ESC as ``\\x1b``).
    Names and labels come from files, folders and archives as their authors wrote them; a hostile
    one could otherwise forge log lines or send escape sequences to the terminal that prints an
    import's report."""
    if not _holds_unsafe(value):
        return value
    return "".join(map(_one_line_character, value))


# Control characters, and lone surrogates (what Python reads for bytes that are not UTF-8)
_UNSAFE_CATEGORIES = ("Cc", "Cs")
# The rows that ``one_line`` would change, as a PostgreSQL regex: the control characters (Unicode
# category Cc) that text can hold, all but NUL. Migrations find names stored before with it.
STORED_CONTROL_CHARACTERS = "[\u0001-\u001f\u007f-\u009f]"


def _holds_unsafe(value: str) -> bool:
    return any(unicodedata.category(character) in _UNSAFE_CATEGORIES for character in value)


def _one_line_character(character: str) -> str:
    if 0xDC80 <= ord(character) <= 0xDCFF:  # os.fsdecode's stand-in for the byte ord - 0xDC00
        character = chr(ord(character) - 0xDC00)
    if unicodedata.category(character) in _UNSAFE_CATEGORIES:
        return character.encode("unicode_escape").decode("ascii")
    return character


class Collection(models.Model):
    name = models.CharField(max_length=200, unique=True, validators=[validate_one_line_name])
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def _image_upload_to(instance: "Image", filename: str) -> str:
    # The stored name never comes from the user: a uuid plus a short, safe extension.
    suffix = PurePath(filename).suffix.lower()
    if not suffix[1:].isalnum() or len(suffix) > 6:
        suffix = ""
    return f"images/{instance.collection_id}/{uuid.uuid4().hex}{suffix}"


def _thumbnail_upload_to(instance: "Image", filename: str) -> str:
    return f"thumbnails/{instance.collection_id}/{uuid.uuid4().hex}.webp"


class ImageManager(models.Manager):
    def get_queryset(self):
        # The copy signature (384 numbers, sent as text and parsed in Python when loaded) is read
        # only where copies are found, not with every page of images; ``save`` leaves a deferred
        # field alone.
        return super().get_queryset().defer("signature")


class Image(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        INDEXED = "indexed", "indexed"
        FAILED = "failed", "failed"

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="images")
    file = models.FileField(upload_to=_image_upload_to, blank=True, max_length=300)
    thumbnail = models.FileField(upload_to=_thumbnail_upload_to, blank=True, max_length=300)
    original_name = models.CharField(max_length=500, validators=[validate_one_line_name])
    label = models.CharField(max_length=200, blank=True, db_index=True, validators=[validate_one_line_label])
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When the image became searchable; the indexing rate shown in progress reports is read from it.
    indexed_at = models.DateTimeField(null=True, blank=True)
    # When a worker was last asked to index it; the sweep re-queues pending images whose request is old.
    queued_at = models.DateTimeField(null=True, blank=True)
    # How many times a worker started indexing or re-embedding it without finishing (0 once done):
    # one that is killed, runs out of memory or time, or raises on a file leaves it counted, and
    # the count tells the next try to take it alone, then to give up on it
    # (workers.services.MAX_INDEX_ATTEMPTS).
    attempts = models.PositiveSmallIntegerField(default=0, db_default=0)  # db_default: raw INSERTs and COPY too
    # The picture's copy signature (``imaging.copy_signature``), recorded with its thumbnail: what
    # finds its copies in every collection (``gallery.selectors.image_list_copies``). Null until a
    # worker made the thumbnail, for a flat grey picture, and for images indexed before signatures
    # (``manage.py rebuild_thumbnails`` gives them one). Half precision: 2 bytes a number in pgvector.
    signature = HalfVectorField(dimensions=SIGNATURE_DIM, null=True, blank=True, editable=False)

    objects = ImageManager()

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["collection", "status"]),
            models.Index(fields=["collection", "sha256"]),
            models.Index(fields=["status", "queued_at"]),
            # A collection's labels (one index probe per distinct label) and its recent indexing
            # rate, without reading the collection's rows (bench/search_scale.py --pages-only).
            models.Index(fields=["collection", "label"]),
            models.Index(fields=["collection", "indexed_at"]),
            HnswIndex(name="image_signature_hnsw", fields=["signature"], opclasses=["halfvec_cosine_ops"], m=16, ef_construction=64),
        ]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.status})"

    @property
    def display_url(self) -> str:
        """The thumbnail once a worker made it, else "": pages and API results never show an
        original (it can weigh 40 MB, or be a HEIC or TIFF that a browser cannot show)."""
        return self.thumbnail.url if self.thumbnail else ""


class CollectionCount(models.Model):
    """How many of a collection's images are in one status, kept by database triggers on the image
    table (migration ``gallery 0004``): every INSERT, UPDATE and DELETE, from any code path or raw
    SQL, adds its change here in the same transaction. Progress counts then cost the same at a
    million images as at ten, instead of counting index entries.

    A status's count is the sum over ``shard``: each database connection writes to its own shard
    (its backend pid modulo 16, in the triggers' SQL), so workers and imports updating one
    collection at once seldom wait on the same row. Never written from Python.
    """

    collection = models.ForeignKey(Collection, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+")
    status = models.CharField(max_length=16)
    shard = models.SmallIntegerField()
    images = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["collection", "status", "shard"], name="one_count_per_shard")]


class WorkerRun(models.Model):
    """What every piece of work the workers do a stretch at a time records besides its position:
    whether it runs or how it ended, the starts of its next stretch that did not finish (past its
    limit the run ends as failed), why the last one failed, and when it started, last moved on
    (the sweep restarts a run quiet for too long) and ended."""

    class Status(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        STOPPED = "stopped"  # by a person, between two stretches

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    tries = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    progress_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class CopyRemovalRun(WorkerRun):
    """A removal of every copy in a collection (``gallery.services.copy_removal_start``): where its
    walk stands, what it did so far and how it ended. The workers do it a stretch at a time
    (``copy_removal_advance``); the position here is committed with each stretch's deletions, so a
    stretch killed midway is done again from the same place, and the sweep restarts a removal whose
    next stretch was never queued or never ran. At most one runs per collection; a person may stop it
    (``copy_removal_stop``)."""

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="copy_removals")
    keep = models.CharField(max_length=16)
    # The next stretch: the images with an id above ``after``, in round ``round``, which has
    # deleted ``deleted_in_round`` images so far (``gallery.services.CopyRemovalStep``).
    round = models.PositiveSmallIntegerField(default=1)
    after = models.BigIntegerField(default=0)
    deleted_in_round = models.PositiveIntegerField(default=0)
    checked = models.PositiveBigIntegerField(default=0)  # images checked, over every round
    deleted = models.PositiveIntegerField(default=0)
    # Images left this round (the last one, once it ended) although their signatures match a
    # picture kept: not alike in every region (``CopyRemovalPlan.unlike``).
    unlike = models.PositiveIntegerField(default=0)
    # tries: past ``gallery.services.COPY_REMOVAL_TRIES_MAX`` the removal stops, as failed.

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection"], condition=models.Q(status="running"), name="one_copy_removal_running_per_collection"),
        ]
        indexes = [models.Index(fields=["collection", "-started_at"], name="copy_removal_latest")]

    def __str__(self) -> str:
        return f"copy removal #{self.pk} of collection {self.collection_id} ({self.status})"

    @property
    def kept(self) -> str:
        """Which picture of a set of copies the removal keeps, in words: "largest" or "first imported"."""
        return "largest" if self.keep == "largest" else "first imported"


class CopyRemovalCandidate(models.Model):
    """An image that round ``round`` of copy removal ``run`` left although it has a copy of a
    higher rank (or more copies than a lookup lists): the next round checks these images only, as
    no other can go then. Written with the stretch that left it; a round's go once the round after
    it ends."""

    run = models.ForeignKey(CopyRemovalRun, on_delete=models.CASCADE, related_name="candidates")
    round = models.PositiveSmallIntegerField()
    image_id = models.BigIntegerField()  # not a key: the image may go meanwhile, and the row with it

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "round", "image_id"], name="copy_removal_candidate_once")]


class MoveRun(WorkerRun):
    """A move of more images than one request moves (``gallery.services.MOVE_IMAGES_MAX``) into
    collection ``to``, done by the workers a stretch of that many at a time
    (``gallery.services.move_run_advance``). The ids to move are fixed when it starts; each
    stretch commits the run's position and counts with its images' move, so a stretch killed
    midway is done again from the same place, and the sweep restarts a run whose next stretch was
    never queued or never ran. A person may stop it (``gallery.services.move_run_stop``). It goes
    with ``to``, if that collection is deleted."""

    to = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="move_runs")
    image_ids = ArrayField(models.BigIntegerField())  # in id order, as the stretches take them
    total = models.PositiveIntegerField(default=0)  # len(image_ids), without reading them
    position = models.PositiveIntegerField(default=0)  # where in image_ids the next stretch starts
    moved = models.PositiveIntegerField(default=0)
    already = models.PositiveIntegerField(default=0)  # were in ``to`` before
    missing = models.PositiveIntegerField(default=0)  # deleted since the move started
    # [image id, the image of ``to`` holding the same file]: each stayed where it was.
    duplicates = models.JSONField(default=list, blank=True)
    # tries: past ``gallery.services.MOVE_RUN_TRIES_MAX`` the run stops, as failed.

    class Meta:
        indexes = [models.Index(fields=["status", "progress_at"], name="move_run_quiet")]
        verbose_name = "image move"  # the admin's "Image moves"

    def __str__(self) -> str:
        return f"move #{self.pk} of {self.total:,} images to collection {self.to_id} ({self.status})"

    @property
    def duplicates_listed(self) -> list[dict]:
        """``duplicates`` as the API lists them: each image's ``id`` and the image it repeats."""
        return [{"id": image_id, "duplicate_of": held} for image_id, held in self.duplicates]
