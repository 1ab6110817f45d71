import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery.models import Collection
from search.selectors import MAX_QUERY_EXPANSION, SearchUnavailable, collection_evaluate
from search.services import encoder_record_evaluation


class Command(BaseCommand):
    help = "Precision@k and mAP@k of the active encoder on a labelled collection (each image queries all the others)."

    def add_arguments(self, parser):
        parser.add_argument("--collection", required=True)
        parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10])
        parser.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object")
        parser.add_argument("--per-label", action="store_true", help="also print a table per label")
        parser.add_argument(
            "--compare", type=int, nargs="+", metavar="ENCODER_ID",
            help="evaluate these encoder versions side by side (their vectors are computed first if missing)",
        )
        parser.add_argument(
            "--expand", type=int, default=None, metavar="N",
            help="query expansion with N neighbours, as search does (default: CBIR_QUERY_EXPANSION; 0 = plain nearest neighbours)",
        )
        parser.add_argument("--plot", type=Path, help="write a result-grid PNG: queries beside their top-k, wrong results in red")
        parser.add_argument("--plot-queries", type=int, default=8, help="queries in the grid (one per label, in turn)")

    def handle(self, *args, collection: str, k: list[int], as_json: bool, per_label: bool, plot, plot_queries, compare, expand, **options):
        target = Collection.objects.filter(name=collection).first()
        if target is None:
            raise CommandError(f"no collection named {collection!r}")
        if any(value < 1 for value in k):
            raise CommandError("--k values must be at least 1")
        ks = sorted(set(k))
        if expand is not None and not 0 <= expand <= MAX_QUERY_EXPANSION:
            raise CommandError(f"--expand must be between 0 and {MAX_QUERY_EXPANSION}")
        # found out before the evaluation, not after it
        if plot and (plot.suffix.lower() != ".png" or plot.is_dir()):
            raise CommandError(f"--plot: name a .png file to write ({plot} is not one)")
        if plot and not plot.resolve().parent.is_dir():
            raise CommandError(f"--plot: no folder {plot.resolve().parent} to write {plot.name} in")
        if plot and plot_queries < 1:
            raise CommandError("--plot-queries must be at least 1")
        if compare:
            self._compare(target, ks=ks, encoder_ids=compare, as_json=as_json, expand=expand)
            return
        total = target.images.exclude(label="").count()
        try:
            with tqdm(total=total, desc="evaluating", unit="query", disable=as_json) as bar:
                result = collection_evaluate(collection_id=target.pk, ks=ks, progress=bar, expand=expand)
        except (SearchUnavailable, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        encoder_record_evaluation(encoder_id=result["encoder"], collection_name=target.name, metrics=result)
        if plot:
            self._plot(target, depth=max(ks), path=plot, count=plot_queries, expand=expand)
        if as_json:
            self.stdout.write(json.dumps(result if per_label else {k: v for k, v in result.items() if k != "per_label"}))
            return
        self.stdout.write(
            f"{target.name}: {result['queries']} queries, {result['labels']} labels, encoder #{result['encoder']}, "
            f"query expansion {result['query_expansion'] or 'off'}"
        )
        if result["held_out_only"]:
            self.stdout.write("held-out images only: the encoder learned from the other images' labels")
        keys = [f"P@{k}" for k in ks] + [f"mAP@{k}" for k in ks]
        self.stdout.write("  ".join(f"{key}={result[key]:.4f}" for key in keys))
        if per_label:
            self.stdout.write(f"{'label':30} " + " ".join(f"{key:>9}" for key in keys))
            for label, metrics in result["per_label"].items():
                self.stdout.write(f"{label[:30]:30} " + " ".join(f"{metrics[key]:9.4f}" for key in keys))

    def _plot(self, collection, *, depth: int, path: Path, count: int, expand: int | None) -> None:
        from gallery.models import Image
        from search.plots import result_grid_png
        from search.selectors import image_list_similar

        queries, seen = [], set()
        indexed = Image.objects.filter(collection=collection, status=Image.Status.INDEXED).exclude(label="").order_by("id")
        for image in indexed.iterator():  # the first image of each label, then more of each, until `count`
            if image.label not in seen:
                seen.add(image.label)
                queries.append(image)
            if len(queries) == count:
                break
        rows = [(q, image_list_similar(image=q, k=depth, collection_ids=[collection.pk], expand=expand)) for q in queries]
        try:
            result_grid_png(path, rows)
        except OSError as exc:  # no permission, a full disk: the metrics above are recorded already
            raise CommandError(f"--plot: could not write {path}: {exc.strerror or exc}") from None
        self.stderr.write(f"result grid written to {path}")

    def _compare(self, collection, *, ks: list[int], encoder_ids: list[int], as_json: bool, expand: int | None) -> None:
        from search.models import EncoderVersion
        from workers.services import encoder_embed_collection

        results = {}
        for encoder_id in encoder_ids:
            encoder = EncoderVersion.objects.filter(pk=encoder_id).first()
            if encoder is None or not encoder.checkpoint:
                raise CommandError(f"no trained encoder version #{encoder_id}")
            embedded = encoder_embed_collection(encoder=encoder, collection=collection)
            if embedded and not as_json:
                self.stderr.write(f"encoder #{encoder_id}: embedded {embedded} images first")
            result = collection_evaluate(collection_id=collection.pk, ks=ks, encoder=encoder, expand=expand)
            encoder_record_evaluation(encoder_id=encoder.pk, collection_name=collection.name, metrics=result)
            results[str(encoder_id)] = {key: v for key, v in result.items() if key != "per_label"} | {"name": encoder.name}
        if as_json:
            self.stdout.write(json.dumps(results))
            return
        keys = [f"P@{k}" for k in ks] + [f"mAP@{k}" for k in ks]
        self.stdout.write(f"{'encoder':40} " + " ".join(f"{key:>8}" for key in keys))
        for encoder_id, result in results.items():
            label = f"#{encoder_id} {result['name']}"[:40]
            self.stdout.write(f"{label:40} " + " ".join(f"{result[key]:8.4f}" for key in keys))
