import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from gallery.models import Collection
from gallery.services import collection_get_or_create, collection_import
from search.models import EncoderVersion

DEMO_FOLDER = Path(settings.BASE_DIR) / "demo" / "openmoji"
DEMO_COLLECTION = "demo"
# Passes of the default encoder's k-means over the demo's 334 emoji (seconds on 2 cores); also
# enough epochs for the seed autoencoder, if it is chosen, to give sensible neighbours (about a minute).
DEMO_EPOCHS = 20


class Command(BaseCommand):
    help = "First-run set-up for `make run`: an admin account, the demo collection, and an encoder trained on it."

    def handle(self, *args, **options):
        password_file = settings.VAR_DIR / "admin-password.txt"
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "admin@localhost", password)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
            self.stdout.write(f"created superuser 'admin' (password in {password_file})")

        if not Collection.objects.filter(name=DEMO_COLLECTION).exists():
            collection = collection_get_or_create(
                name=DEMO_COLLECTION, description="OpenMoji 17 emoji (CC BY-SA 4.0), labelled by Unicode subgroup."
            )
            report = collection_import(collection=collection, path=DEMO_FOLDER, labels_from_dirs=True)
            self.stdout.write(f"demo collection: {report.summary()}")

        if not EncoderVersion.objects.exclude(status=EncoderVersion.Status.FAILED).exists():
            from workers.services import encoder_queue_training

            collection = Collection.objects.get(name=DEMO_COLLECTION)
            encoder_queue_training(collection=collection, epochs=DEMO_EPOCHS, activate=True)
            self.stdout.write(f"training an encoder on '{DEMO_COLLECTION}' in the worker ({DEMO_EPOCHS} epochs); search starts when it is active")
