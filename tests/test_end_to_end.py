"""The whole way, on real parts: admin upload -> Celery worker (real Redis) -> train -> activate ->
search over HTTP returns the image first for itself."""
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from gallery.models import Collection, Image
from gallery.selectors import collection_stats
from search.models import EncoderVersion, Embedding
from tests.conftest import wait_for
from tests.utils import image_bytes

COLORS = [(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 220, 30), (30, 210, 220), (200, 40, 210), (120, 120, 120), (250, 140, 20)]


def _red_and_blue_collection(per_label: int) -> Collection:
    """Two labels that differ in colour only: any encoder separates them, so P@1 is well above
    chance. Every picture has a texture of its own: a red and a blue one with the same texture
    would be the same shape in two colours, which the default encoder rightly ranks first."""
    from gallery.services import IncomingFile, images_create

    collection = Collection.objects.create(name="e2e")
    files = [
        IncomingFile(name=f"{label[0]}{i}.png", data=image_bytes(color=color, pattern=offset + i), label=label)
        for label, color, offset in (("red", (230, 20, 20), 0), ("blue", (20, 20, 230), 1000))
        for i in range(per_label)
    ]
    images_create(collection=collection, files=files)
    return collection


def _train_and_activate(*extra: str) -> EncoderVersion:
    encoder = _train("--activate", *extra)
    wait_for(lambda: EncoderVersion.objects.get(pk=encoder.pk).status == EncoderVersion.Status.ACTIVE, message="activation")
    return encoder


def _train(*extra: str) -> EncoderVersion:
    call_command("train_encoder", "--collection", "e2e", "--epochs", "2", "--image-size", "32", "--batch-size", "4", *extra)
    return EncoderVersion.objects.order_by("-id").first()


def test_upload_index_train_activate_search(celery_worker, client, django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "a-long-password")
    client.force_login(admin)
    collection = Collection.objects.create(name="e2e")
    pictures = {f"p{i}.png": image_bytes(color=color, pattern=i, size=(80, 60)) for i, color in enumerate(COLORS)}
    uploads = [SimpleUploadedFile(name, data, content_type="image/png") for name, data in pictures.items()]
    uploads += [
        SimpleUploadedFile("truncated.jpg", image_bytes(size=(200, 200), fmt="JPEG", pattern=99)[:500]),
        SimpleUploadedFile("empty.png", b""),
    ]
    response = client.post(reverse("admin:gallery_collection_upload", args=[collection.pk]), {"files": uploads})
    assert response.status_code == 302

    # The worker decodes and thumbnails every good image; with no encoder yet they stay pending.
    wait_for(
        lambda: Image.objects.filter(collection=collection).exclude(thumbnail="").count() == len(pictures),
        message="thumbnails",
    )
    failed = {image.original_name: image.error for image in Image.objects.filter(status=Image.Status.FAILED)}
    assert set(failed) == {"truncated.jpg", "empty.png"}
    assert "empty file" in failed["empty.png"] and failed["truncated.jpg"]
    assert collection_stats(collection=collection)["pending"] == len(pictures)
    assert client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", pictures["p1.png"])}).status_code == 503

    first = _train_and_activate()
    stats = collection_stats(collection=collection)
    assert {k: stats[k] for k in ("total", "pending", "indexed", "failed")} == {"total": 10, "pending": 0, "indexed": 8, "failed": 2}
    assert stats["indexed_per_second"] > 0

    for name, data in pictures.items():
        response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", data), "k": 3})
        best = response.json()["results"][0]
        assert (best["original_name"], round(best["distance"], 4)) == (name, 0.0)

    query = Image.objects.get(original_name="p2.png")
    similar = client.get(reverse("api-image-similar", args=[query.pk]), {"k": 5}).json()
    assert similar["count"] == 5 and query.pk not in [hit["id"] for hit in similar["results"]]

    # A second encoder, of the other architecture: search keeps answering from the first until the
    # switch, then only the second's vectors are left.
    second = _train_and_activate("--arch", "conv_ae", "--seed", "1")
    assert (first.arch, second.arch) == ("patch_kmeans", "conv_ae")
    assert set(second.metrics["training"]["artifacts"]) == {"loss_curve", "reconstructions"}
    assert EncoderVersion.objects.get(pk=first.pk).status == EncoderVersion.Status.RETIRED
    assert set(Embedding.objects.values_list("encoder_id", flat=True)) == {second.pk}
    assert Embedding.objects.count() == 8

    # An upload after the switch is embedded with the new encoder and found.
    late = image_bytes(color=(10, 10, 10), pattern=42)
    client.post(reverse("admin:gallery_collection_upload", args=[collection.pk]), {"files": [SimpleUploadedFile("late.png", late)]})
    wait_for(lambda: Image.objects.filter(original_name="late.png", status=Image.Status.INDEXED).exists(), message="late image")
    best = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", late)}).json()["results"][0]
    assert best["original_name"] == "late.png"


def test_evaluate_command_reports_precision_through_search(celery_worker, capsys, tmp_path):
    import json

    _red_and_blue_collection(5)
    encoder = _train_and_activate()
    capsys.readouterr()
    call_command("evaluate", "--collection", "e2e", "--k", "1", "4", "--json")
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"P@1", "P@4", "mAP@1", "mAP@4", "queries", "labels", "encoder", "held_out_only", "query_expansion"}
    assert result["held_out_only"] is False
    assert result["query_expansion"] == settings.CBIR_QUERY_EXPANSION  # ranked as search ranks
    assert result["queries"] == 10 and result["labels"] == 2 and result["encoder"] == encoder.pk
    assert 0.5 < result["P@1"] <= 1.0 and 0.0 < result["mAP@4"] <= 1.0
    encoder.refresh_from_db()  # the figures are kept on the encoder version for the admin
    kept = ("P@1", "P@4", "mAP@1", "mAP@4", "queries", "query_expansion")
    assert encoder.metrics["evaluation"]["e2e"] == {k: result[k] for k in kept}
    call_command("evaluate", "--collection", "e2e", "--k", "1", "4", "--json", "--expand", "0")
    plain = json.loads(capsys.readouterr().out)
    assert plain["query_expansion"] == 0 and plain["queries"] == 10
    with pytest.raises(CommandError, match="--expand"):
        call_command("evaluate", "--collection", "e2e", "--expand", "-1")

    plot = tmp_path / "grid.png"
    call_command("evaluate", "--collection", "e2e", "--k", "4", "--plot", str(plot), "--plot-queries", "2")
    from PIL import Image as PILImage

    grid = PILImage.open(plot)
    assert grid.size == (5 * 112 + 12, 2 * (112 + 28) + 12)  # 2 queries (one per label), each + 4 results


def test_admin_trains_an_encoder_in_the_worker_and_shows_its_pictures(celery_worker, admin_client):
    from gallery.services import IncomingFile, images_create

    collection = Collection.objects.create(name="from-admin")
    images_create(
        collection=collection,
        files=[IncomingFile(name=f"{i}.png", data=image_bytes(color=COLORS[i % 8], pattern=i)) for i in range(6)],
    )
    response = admin_client.post(
        reverse("admin:gallery_collection_changelist"),
        {"action": "train_encoder", "_selected_action": [collection.pk]},
        follow=True,
    )
    assert "Training" in response.content.decode()
    encoder = EncoderVersion.objects.get(trained_on=collection)
    # The planned run is visible at once; the worker fits the default encoder (15 k-means passes)
    # and activates it.
    wait_for(lambda: EncoderVersion.objects.get(pk=encoder.pk).status == EncoderVersion.Status.ACTIVE, message="admin training")
    encoder.refresh_from_db()
    history = encoder.metrics["training"]
    assert history["epochs_run"] == 15 and len(history["train_loss"]) == 15
    assert encoder.arch == "patch_kmeans"
    assert set(history["artifacts"]) == {"loss_curve", "dictionary"}
    page = admin_client.get(reverse("admin:search_encoderversion_change", args=[encoder.pk])).content.decode()
    assert "epoch 15/15" in page
    for kind in ("loss_curve", "dictionary"):
        picture = admin_client.get(reverse("admin:search_encoderversion_artifact", args=[encoder.pk, kind]))
        assert picture.status_code == 200 and picture["Content-Type"] == "image/png"
        assert b"".join(picture.streaming_content).startswith(b"\x89PNG")
    assert admin_client.get(reverse("admin:search_encoderversion_artifact", args=[encoder.pk, "nope"])).status_code == 404


def test_import_wait_returns_when_images_only_wait_for_an_encoder(celery_worker, tmp_path, capsys):
    root = tmp_path / "photos"  # beside the test's media folder, which a second import must not see
    (root / "a").mkdir(parents=True)
    for i in range(3):
        (root / "a" / f"{i}.png").write_bytes(image_bytes(pattern=i))
    # A header that passes the upload's check over data that only the worker's decoder finds cut,
    # and a file that the upload already refuses.
    (root / "a" / "cut.jpg").write_bytes(image_bytes(size=(200, 200), fmt="JPEG", pattern=9)[:6000])
    (root / "a" / "junk.png").write_bytes(b"not an image")
    call_command("import_images", str(root), "--collection", "no-encoder-yet", "--wait")
    out = capsys.readouterr().out
    assert "3 images are stored and thumbnailed, and wait for an encoder" in out
    assert Image.objects.filter(status=Image.Status.PENDING).exclude(thumbnail="").count() == 3
    cut = Image.objects.get(original_name="a/cut.jpg")  # names are paths below the imported folder
    assert cut.status == Image.Status.FAILED
    late = out.split("1 failed while indexing:")[1]
    assert f"a/cut.jpg: {cut.error}" in late and "junk.png" not in late  # junk.png was reported at upload

    # The same folder again: the cut file is retried as the same image and fails again in the
    # worker, the junk is refused again without a second row, the rest are duplicates.
    call_command("import_images", str(root), "--collection", "no-encoder-yet", "--wait")
    out = capsys.readouterr().out
    assert "1 queued for indexing, 1 failed, 3 duplicates, 0 skipped" in out
    assert f"a/cut.jpg: {cut.error}" in out.split("1 failed while indexing:")[1]
    assert Image.objects.count() == 5 and Image.objects.get(original_name="a/cut.jpg").status == Image.Status.FAILED
    originals = [path for path in (tmp_path / "media").rglob("*") if path.suffix in (".png", ".jpg")]
    assert len(originals) == 4  # the cut file was not stored a second time


def test_evaluate_compares_encoder_versions_side_by_side(celery_worker, capsys):
    import json

    _red_and_blue_collection(4)
    first = _train_and_activate()
    second = _train("--seed", "3")  # trained, never activated: no vectors yet
    assert not Embedding.objects.filter(encoder=second).exists()
    capsys.readouterr()
    call_command("evaluate", "--collection", "e2e", "--k", "1", "3", "--compare", str(first.pk), str(second.pk), "--json")
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {str(first.pk), str(second.pk)}
    assert all(r["queries"] == 8 and 0.0 <= r["mAP@3"] <= 1.0 for r in results.values())
    assert results[str(second.pk)]["encoder"] == second.pk
    assert Embedding.objects.filter(encoder=second).count() == 8  # computed for the comparison
    assert EncoderVersion.objects.get(pk=first.pk).status == EncoderVersion.Status.ACTIVE  # search unchanged


def test_an_encoder_without_gradient_words_trains_activates_and_ranks(celery_worker, capsys):
    """``train_encoder --no-gradient-words``: the cheaper encoder, on 32 px pictures without the
    words' block, goes the whole way: trained, activated (every image embedded by the worker) and
    searched through evaluate as the API searches."""
    import json

    from workers.autoencoder.model import load_checkpoint

    _red_and_blue_collection(5)
    fast = _train_and_activate("--no-gradient-words")
    assert fast.name == "patch_kmeans without gradient words on e2e"
    model, config = load_checkpoint(fast.checkpoint.path, map_location="cpu")
    assert (config.gradient_words, config.input_size) == (0, 32) and "words" not in model.state_dict()
    assert Embedding.objects.filter(encoder=fast).count() == 10
    capsys.readouterr()
    call_command("evaluate", "--collection", "e2e", "--k", "1", "--json")
    result = json.loads(capsys.readouterr().out)
    assert result["encoder"] == fast.pk and result["queries"] == 10 and result["P@1"] > 0.5


def test_use_labels_learns_a_metric_and_is_scored_on_held_out_images_only(celery_worker, capsys):
    import json

    collection = _red_and_blue_collection(5)
    with pytest.raises(CommandError, match="--arch patch_kmeans"):
        _train("--arch", "conv_ae", "--use-labels")
    encoder = _train_and_activate("--use-labels", "--held-out", "0.4")
    history = encoder.metrics["training"]
    held_out = set(history["held_out_image_ids"])
    labelled = set(Image.objects.filter(collection=collection).values_list("id", flat=True))
    assert len(held_out) == 4 and held_out < labelled  # 2 of each label's 5
    assert history["labelled_training_images"] == 6
    assert len(history["metric_loss"]) == 2  # one per epoch (--epochs 2)
    capsys.readouterr()
    call_command("evaluate", "--collection", "e2e", "--k", "1", "--json")
    result = json.loads(capsys.readouterr().out)
    assert result["held_out_only"] is True and result["queries"] == 4
