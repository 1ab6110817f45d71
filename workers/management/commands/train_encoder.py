import torch
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gallery.models import Collection
from search.services import encoder_activate
from workers.autoencoder.model import DEFAULT_ARCH, DEFAULT_IMAGE_SIZE, EncoderConfig
from workers.autoencoder.training import TrainingConfig
from workers.services import encoder_plan, encoder_train


class Command(BaseCommand):
    help = "Train an encoder on a collection's images (no labels) and store it as a new encoder version."

    def add_arguments(self, parser):
        parser.add_argument("--collection", required=True)
        parser.add_argument(
            "--arch", default=DEFAULT_ARCH, choices=sorted(DEFAULT_IMAGE_SIZE),
            help=f"{DEFAULT_ARCH} (default): learned patch dictionary; conv_ae: the seed autoencoder",
        )
        parser.add_argument("--epochs", type=int, default=15, help="conv_ae: passes over the images; patch_kmeans: k-means passes")
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument(
            "--image-size", type=int, default=None,
            help=", ".join(f"{arch}: {size}" for arch, size in sorted(DEFAULT_IMAGE_SIZE.items())) + " by default",
        )
        parser.add_argument("--dim", type=int, default=settings.CBIR_EMBEDDING_DIM)
        parser.add_argument("--lr", type=float, default=1e-3)
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--max-minutes", type=float, default=None)
        parser.add_argument(
            "--use-labels", action="store_true",
            help="patch_kmeans: then train its projection with a triplet loss on the images' labels (metric learning)",
        )
        parser.add_argument(
            "--held-out", type=float, default=0.3,
            help="with --use-labels: share of each label's images kept out of training, for evaluate (default 0.3)",
        )
        parser.add_argument(
            "--no-gradient-words", action="store_true",
            help="patch_kmeans: leave out its bag of gradient words (32 px input): about a quarter of the encoder's time "
            "on a CPU, so faster indexing, for less precise results (README, limits)",
        )
        parser.add_argument("--name", default="", help='shown in the admin: one line, at most 200 characters (default "ARCH on COLLECTION")')
        parser.add_argument("--activate", action="store_true", help="make it the active encoder and re-embed every image")

    def handle(self, *args, **o):
        collection = Collection.objects.filter(name=o["collection"]).first()
        if collection is None:
            raise CommandError(f"no collection named {o['collection']!r}")
        if o["device"].startswith("cuda") and not torch.cuda.is_available():
            # trained here, in this process (the admin's training runs on a worker, which checks its own)
            raise CommandError(f"--device {o['device']}: this machine has no CUDA device (use --device auto or cpu)")
        try:
            words = {"gradient_words": 0} if o["no_gradient_words"] else {}
            model_config = EncoderConfig(arch=o["arch"], image_size=o["image_size"], dim=o["dim"], **words)
            planned = encoder_plan(
                collection=collection,
                model_config=model_config,
                train_config=TrainingConfig(
                    epochs=o["epochs"],
                    batch_size=o["batch_size"],
                    learning_rate=o["lr"],
                    seed=o["seed"],
                    device=o["device"],
                    max_minutes=o["max_minutes"],
                    use_labels=o["use_labels"],
                    held_out=o["held_out"],
                ),
                name=o["name"],
            )
            encoder = encoder_train(encoder=planned, show_progress=True)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        history = encoder.metrics["training"]
        if "metric_loss" in history:
            self.stdout.write(
                f"metric learning on {history['labelled_training_images']} labelled images, "
                f"{len(history['held_out_image_ids'])} held out for evaluate; triplet loss "
                f"{history['metric_loss'][0]:.4f} -> {history['metric_loss'][-1]:.4f}"
            )
        self.stdout.write(
            f"encoder #{encoder.pk}: {history['epochs_run']} epochs on {history['images']} images, "
            f"final loss {history['train_loss'][-1]:.5f}, {history['seconds']} s on {history['device']}"
        )
        if o["activate"]:
            encoder_activate(encoder=encoder)
            self.stdout.write("activation started: every image is re-embedded in the background, then search switches")
