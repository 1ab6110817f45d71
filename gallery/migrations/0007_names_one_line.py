"""Names and labels stored before the import wrote control characters as escapes (``one_line``)
get the same escapes, so that every row reads as new ones do: a collection named with a control
character could no longer be saved in the admin (its name fails ``validate_one_line_name``), and
the pages showed such characters as boxes. Only the rows holding one are read and written."""

from django.db import migrations

from gallery.models import STORED_CONTROL_CHARACTERS, one_line


def _free_name(name: str, taken) -> str:
    """``name``, or with " (2)", " (3)"... where a collection already has it."""
    candidate, number = name, 1
    while taken(candidate):
        number += 1
        suffix = f" ({number})"
        candidate = name[: 200 - len(suffix)] + suffix
    return candidate


def names_one_line(apps, schema_editor):
    Collection = apps.get_model("gallery", "Collection")
    Image = apps.get_model("gallery", "Image")
    for collection in Collection.objects.filter(name__regex=STORED_CONTROL_CHARACTERS):
        collection.name = _free_name(one_line(collection.name)[:200], lambda name: Collection.objects.filter(name=name).exists())
        collection.save(update_fields=["name"])
    for image in Image.objects.filter(original_name__regex=STORED_CONTROL_CHARACTERS).only("original_name"):
        Image.objects.filter(pk=image.pk).update(original_name=one_line(image.original_name)[:500])
    for image in Image.objects.filter(label__regex=STORED_CONTROL_CHARACTERS).only("label"):
        Image.objects.filter(pk=image.pk).update(label=one_line(image.label)[:200])


class Migration(migrations.Migration):

    dependencies = [
        ("gallery", "0006_collection_name_one_line"),
    ]

    operations = [
        migrations.RunPython(names_one_line, migrations.RunPython.noop, elidable=True),
    ]
