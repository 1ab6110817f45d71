from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

INDEX = "embedding_vector_hnsw"


class Command(BaseCommand):
    help = (
        "Rebuild the HNSW index on embedding vectors with other parameters (m, ef_construction). "
        "The new index is built CONCURRENTLY beside the old one, so search keeps working."
    )

    def add_arguments(self, parser):
        parser.add_argument("--m", type=int, default=settings.CBIR_HNSW_M)
        parser.add_argument("--ef-construction", type=int, default=settings.CBIR_HNSW_EF_CONSTRUCTION)
        parser.add_argument("--maintenance-work-mem", default="1GB", help="memory for the build (e.g. 4GB)")

    def handle(self, *args, m: int, ef_construction: int, maintenance_work_mem: str, **options):
        if not 2 <= m <= 100 or not 4 <= ef_construction <= 1000 or ef_construction < 2 * m:
            raise CommandError("need 2 <= m <= 100 and 2*m <= ef_construction <= 1000")
        if not maintenance_work_mem[:-2].isdigit() or maintenance_work_mem[-2:] not in ("MB", "GB"):
            raise CommandError("--maintenance-work-mem looks like 512MB or 4GB")
        with connection.cursor() as cursor:
            cursor.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}_new")
            cursor.execute(
                f"CREATE INDEX CONCURRENTLY {INDEX}_new ON search_embedding USING hnsw (vector vector_cosine_ops) "
                "WITH (m = %s, ef_construction = %s)",
                [m, ef_construction],
            )
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
            cursor.execute(f"ALTER INDEX {INDEX}_new RENAME TO {INDEX}")
        self.stdout.write(f"rebuilt {INDEX} with m={m}, ef_construction={ef_construction}")
