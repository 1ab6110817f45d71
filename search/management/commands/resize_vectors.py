from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from search.models import Embedding
from search.selectors import vector_column_dim
from search.services import vector_column_resize


class Command(BaseCommand):
    help = (
        "Make the vector column and its HNSW index as wide as CBIR_EMBEDDING_DIM, after that setting "
        "changed. Existing vectors of another width are deleted (they cannot be converted); train and "
        "activate an encoder of the new width afterwards."
    )

    def add_arguments(self, parser):
        parser.add_argument("--delete-vectors", action="store_true", help="confirm: the current vectors are deleted")

    def handle(self, *args, delete_vectors: bool, **options):
        current, wanted = vector_column_dim(), settings.CBIR_EMBEDDING_DIM
        if current == wanted:
            self.stdout.write(f"the vector column is already {wanted} wide; nothing to do")
            return
        vectors = Embedding.objects.count()
        if vectors and not delete_vectors:
            raise CommandError(
                f"the vector column is {current} wide and CBIR_EMBEDDING_DIM is {wanted}: resizing deletes "
                f"{vectors} vectors and retires their encoders. Run again with --delete-vectors to do it."
            )
        deleted = vector_column_resize(dim=wanted)
        self.stdout.write(
            f"vector column {current} -> {wanted}; {deleted} vectors deleted. Next: "
            f"train_encoder --collection NAME --activate (its --dim defaults to {wanted})."
        )
