"""The admin's actions, whatever the selection a form sends (``cbir_site.admin_actions``)."""
import pytest
from django.contrib.admin import helpers
from django.urls import reverse

from gallery.models import Collection
from gallery.services import IncomingFile, images_create
from tests.utils import image_bytes

pytestmark = pytest.mark.django_db

ACTIONS = [
    ("gallery_collection", "export_zip"),
    ("gallery_collection", "remove_copies"),
    ("gallery_collection", "train_encoder"),
    ("gallery_collection", "train_fast_encoder"),
    ("gallery_image", "move_to_collection"),
    ("gallery_image", "export_zip"),
    ("gallery_image", "index_again"),
    ("gallery_copyremovalrun", "stop"),
    ("search_encoderversion", "activate"),
    ("auth_user", "delete_selected"),  # Django's own, given the same check
    ("auth_group", "delete_selected"),
]


@pytest.mark.parametrize("model, action", ACTIONS)
@pytest.mark.parametrize("selected", ["", "abc", "1" * 5000], ids=["empty", "word", "5000 digits"])
def test_a_selection_that_is_not_ids_is_refused_with_a_message(admin_client, model, action, selected):
    """Found by fuzzing make run: each was a 500 (the admin's own filter raised on the value)."""
    url = reverse(f"admin:{model}_changelist")

    response = admin_client.post(url, {"action": action, helpers.ACTION_CHECKBOX_NAME: ["1", selected]}, follow=True)

    assert response.status_code == 200
    assert "The selection sent is not a list of ids, so nothing was done" in response.content.decode()


def test_a_selection_of_ids_still_runs_the_action(admin_client):
    kept = Collection.objects.create(name="kept")
    picture = image_bytes(pattern=1)
    images_create(collection=kept, files=[IncomingFile(name="x.png", label="", data=picture)])
    url = reverse("admin:gallery_collection_changelist")

    response = admin_client.post(url, {"action": "export_zip", helpers.ACTION_CHECKBOX_NAME: [" %d " % kept.pk]})

    assert response.status_code == 200 and response["Content-Disposition"] == 'attachment; filename="kept.zip"'
    assert picture in b"".join(response.streaming_content)


def test_the_fast_training_action_plans_the_encoder_without_its_gradient_words(admin_client):
    """Queued once the transaction commits (never, in this test): the planned version is what the
    worker will fit, named for what it leaves out; the other action plans the default encoder."""
    from search.models import EncoderVersion
    from workers.autoencoder.model import EncoderConfig

    collection = Collection.objects.create(name="quick")
    url = reverse("admin:gallery_collection_changelist")
    for action in ("train_fast_encoder", "train_encoder"):
        page = admin_client.post(url, {"action": action, helpers.ACTION_CHECKBOX_NAME: [collection.pk]}, follow=True).content.decode()
        assert "queued; its progress shows on its page" in page
    fast, default = EncoderVersion.objects.order_by("id")
    assert fast.name == "patch_kmeans without gradient words on quick" and default.name == "patch_kmeans on quick"
    assert EncoderConfig(**fast.config["model"]).input_size == 32 and fast.config["model"]["gradient_words"] == 0
    assert default.config["model"]["gradient_words"] == EncoderConfig().gradient_words > 0
