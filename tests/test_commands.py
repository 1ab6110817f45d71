"""The management commands refuse arguments they cannot act on with a CommandError that says why,
before they create anything or spend minutes on work they then cannot finish; and while they wait,
they say what for."""
import pytest
import torch
from django.conf import settings
from django.core.management import CommandError, call_command

from gallery.services import collection_get_or_create
from search.models import EncoderVersion

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--max-minutes", "-1"], "--max-minutes must be above 0"),
        (["--max-minutes", "0"], "--max-minutes must be above 0"),
        (["--lr", "0"], "--lr and --max-minutes must be above 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--device", "gpu"], "--device 'gpu' names no device"),
        (["--name", "red\x1b[31m"], "--name: a name cannot hold control characters"),
        (["--name", "n" * 201], "--name: an encoder's name has at most 200 characters"),
        (["--arch", "conv_ae", "--no-gradient-words"], "--no-gradient-words leaves out a block of patch_kmeans"),
        pytest.param(
            ["--device", "cuda"], "this machine has no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
    ids=[
        "negative-minutes", "zero-minutes", "zero-lr", "zero-batch", "no-such-device", "escape-in-name", "long-name",
        "words-for-conv-ae", "cuda-without-one",
    ],
)
def test_train_encoder_refuses_settings_it_cannot_train_with(arguments, message):
    """A negative --max-minutes trained one epoch and stored the encoder; --device cuda on a
    machine without CUDA was a traceback and left a failed version behind."""
    collection_get_or_create(name="c")
    with pytest.raises(CommandError, match=message):
        call_command("train_encoder", "--collection", "c", *arguments)
    assert not EncoderVersion.objects.exists()


def test_an_encoder_of_a_collection_with_a_long_name_is_named_within_its_column():
    """Its default name, "ARCH on COLLECTION", was longer than the column for a collection name of
    over 184 characters: the admin's "Train an encoder" was a 500 (a DataError) and nothing trained."""
    from workers.autoencoder.model import EncoderConfig
    from workers.autoencoder.training import TrainingConfig
    from workers.services import encoder_plan, encoder_queue_training

    collection = collection_get_or_create(name="n" * 200)
    encoder = encoder_queue_training(collection=collection)  # not queued: the test's transaction never commits
    encoder.refresh_from_db()
    limit = EncoderVersion._meta.get_field("name").max_length
    assert len(encoder.name) == limit and encoder.name == f"{encoder.arch} on {collection.name}"[: limit - 1] + "\u2026"
    named = encoder_plan(
        collection=collection, model_config=EncoderConfig(dim=settings.CBIR_EMBEDDING_DIM), train_config=TrainingConfig(), name="n" * limit
    )
    assert named.name == "n" * limit  # a name given at the column's width is kept whole


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--plot", "/nonexistent/folder/grid.png"], "--plot: no folder /nonexistent/folder"),
        (["--plot", "."], "--plot: name a .png file"),
        (["--plot", "grid.jpg"], "--plot: name a .png file"),
        (["--plot", "grid.png", "--plot-queries", "0"], "--plot-queries must be at least 1"),
    ],
    ids=["no-such-folder", "a-folder", "not-png", "no-queries"],
)
def test_evaluate_refuses_a_plot_it_could_not_write_before_evaluating(arguments, message):
    """These were tracebacks (FileNotFoundError, ValueError), raised after the whole evaluation."""
    collection_get_or_create(name="c")  # nothing to evaluate: the arguments are refused first
    with pytest.raises(CommandError, match=message):
        call_command("evaluate", "--collection", "c", *arguments)


@pytest.mark.parametrize("minutes", ["-5", "nan", "1e308"])
def test_prune_media_refuses_an_age_that_is_not_a_number_of_minutes(minutes):
    """NaN passed the check for negative values, and both NaN and 1e308 then raised a traceback
    (ValueError, OverflowError) building the age: a command that deletes files says what it takes."""
    with pytest.raises(CommandError, match="--older-than takes minutes from 0 to"):
        call_command("prune_media", "--older-than", minutes, "--dry-run")


def _polls_doing(monkeypatch, meanwhile: list) -> None:
    """``import_images --wait`` runs the next of ``meanwhile`` where it would sleep between two
    polls: the steps stand in for time passing, and for what happens meanwhile."""
    import time
    from types import SimpleNamespace

    from gallery.management.commands import import_images

    monkeypatch.setattr(import_images, "time", SimpleNamespace(monotonic=time.monotonic, sleep=lambda seconds: meanwhile.pop(0)()))


def _pictures(folder, indices) -> None:
    """A different picture ``N.png`` in ``folder`` for each N of ``indices``."""
    from tests.utils import image_bytes

    for index in indices:
        (folder / f"{index}.png").write_bytes(image_bytes(pattern=index))


def _indexed_then_more(folder, collection: str, *, indexed: int, more: int) -> None:
    """``indexed`` pictures in ``folder`` imported into ``collection`` and marked indexed, then
    ``more`` pictures written beside them for the import that the test runs."""
    from gallery.models import Image
    from tests.utils import make_encoder

    make_encoder()
    _pictures(folder, range(indexed))
    call_command("import_images", str(folder), "--collection", collection)
    Image.objects.update(status=Image.Status.INDEXED)
    _pictures(folder, range(indexed, indexed + more))


def _bars_drawn(err: str) -> list[tuple[str, str, str]]:
    """(finished, total, rate) of each progress bar that ``import_images --wait`` drew."""
    import re

    drawn = [line for line in err.split("\r") if "indexing" in line]
    return [(done, total, rate.strip()) for done, total, rate in (re.search(r"(\d+)/(\d+) \[[^,]*, ([^\]]*?)img/s", line).groups() for line in drawn)]


def test_import_wait_says_what_a_stalled_indexing_waits_for(monkeypatch, tmp_path, capsys):
    """It used to show a progress bar that stopped moving, for ever, and nothing else. Here no
    worker sees these rows (they are not committed)."""
    from gallery.management.commands import import_images
    from gallery.models import Image
    from tests.utils import make_encoder

    make_encoder()
    _pictures(tmp_path, range(2))
    reason = "waiting: media storage is not mounted on w1: /data/media has no .cbir-media file"
    meanwhile = [
        lambda: None,
        lambda: Image.objects.filter(original_name="1.png").update(error=reason),
        lambda: None,  # the same notice is not shown twice
        lambda: Image.objects.update(status=Image.Status.INDEXED, error=""),
    ]
    monkeypatch.setattr(import_images, "STALL_NOTICE_S", 0)
    _polls_doing(monkeypatch, meanwhile)

    call_command("import_images", str(tmp_path), "--collection", "stalled", "--wait")

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("no image finished")]
    assert lines == [
        "no image finished in the last 0 s: is a worker running (`celery -A workers worker`), and can it reach the broker?",
        f"no image finished in the last 0 s; the pending ones say: {reason}",
    ]
    assert not meanwhile


def test_import_wait_counts_no_rate_for_images_finished_before_it_waited(monkeypatch, tmp_path, capsys):
    """The bar used to start at 0 and jump to the images already indexed (those of an earlier
    import, or indexed while this one stored its files) within a millisecond, and showed a rate of
    thousands of images a second. Now it starts from them and shows no rate until one more finishes."""
    from gallery.models import Image

    _indexed_then_more(tmp_path, "growing", indexed=3, more=2)
    meanwhile = [lambda: None, lambda: Image.objects.update(status=Image.Status.INDEXED)]
    _polls_doing(monkeypatch, meanwhile)
    capsys.readouterr()

    call_command("import_images", str(tmp_path), "--collection", "growing", "--wait")

    bars = _bars_drawn(capsys.readouterr().err)
    assert bars[0] == ("3", "5", "?") and bars[-1][:2] == ("5", "5")
    assert all(rate == "?" for done, _, rate in bars if done == "3")
    assert not meanwhile


def test_import_wait_stops_with_an_error_when_the_collection_is_deleted(monkeypatch, tmp_path):
    """Deleted in the admin or through the API while the command waited, the collection's counts
    fell to 0: the bar ran backwards (-158 img/s on the running stack) and the command ended as if
    every image had been indexed, with exit status 0."""
    from gallery.models import Collection
    from gallery.services import collection_delete
    from tests.utils import make_encoder

    make_encoder()
    _pictures(tmp_path, range(2))
    meanwhile = [lambda: collection_delete(collection=Collection.objects.get(name="going"))]
    _polls_doing(monkeypatch, meanwhile)

    with pytest.raises(CommandError, match=r"collection 'going' was deleted while this command waited .*; its 2 images and their files went"):
        call_command("import_images", str(tmp_path), "--collection", "going", "--wait")
    assert not meanwhile
    assert not Collection.objects.filter(name="going").exists()


def test_import_wait_follows_images_deleted_while_it_waits(monkeypatch, tmp_path, capsys):
    """Images deleted while the command waited stayed in the bar's total, so it ended short of
    100 % (2/4 here), and indexed ones among them made its rate negative."""
    from gallery.models import Image
    from gallery.services import images_delete

    _indexed_then_more(tmp_path, "thinned", indexed=2, more=2)
    meanwhile = [
        lambda: images_delete(images=Image.objects.filter(status=Image.Status.INDEXED)),
        lambda: Image.objects.update(status=Image.Status.INDEXED),
    ]
    _polls_doing(monkeypatch, meanwhile)
    capsys.readouterr()

    call_command("import_images", str(tmp_path), "--collection", "thinned", "--wait")

    bars = _bars_drawn(capsys.readouterr().err)
    assert bars[0][:2] == ("2", "4") and bars[-1][:2] == ("2", "2")
    assert not [rate for _, _, rate in bars if rate.startswith("-")]
    assert not meanwhile
    assert Image.objects.filter(collection__name="thinned").count() == 2


@pytest.mark.parametrize("command", [["rebuild_thumbnails"], ["prune_media"], ["remove_copies", "--collection", "c", "--dry-run"]])
def test_media_commands_refuse_to_run_where_the_media_volume_is_not_mounted(command, settings, tmp_path):
    """They used to report every image unreadable, or find nothing to prune and say all was clean
    (remove_copies: every copy unlike, its thumbnail unread)."""
    settings.MEDIA_ROOT = tmp_path / "not-mounted"
    with pytest.raises(CommandError, match=r"media storage is not mounted on .*not-mounted has no \.cbir-media file"):
        call_command(*command)
