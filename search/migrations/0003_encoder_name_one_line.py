"""Encoder names are checked as collection and image names are (``validate_one_line_name``): a
``train_encoder --name`` holding a control character was stored as it came, then showed as a box
in the admin's list and could no longer be saved there. Names stored before get the import's
escapes (``one_line``); only the rows holding one are read and written."""

from django.db import migrations, models

import gallery.models


def encoder_names_one_line(apps, schema_editor):
    EncoderVersion = apps.get_model("search", "EncoderVersion")
    for encoder in EncoderVersion.objects.filter(name__regex=gallery.models.STORED_CONTROL_CHARACTERS).only("name"):
        EncoderVersion.objects.filter(pk=encoder.pk).update(name=gallery.models.one_line(encoder.name)[:200])


class Migration(migrations.Migration):

    dependencies = [
        ("search", "0002_ingestion_progress"),
        ("gallery", "0008_image_names_one_line"),
    ]

    operations = [
        migrations.AlterField(
            model_name="encoderversion",
            name="name",
            field=models.CharField(max_length=200, validators=[gallery.models.validate_one_line_name]),
        ),
        migrations.RunPython(encoder_names_one_line, migrations.RunPython.noop, elidable=True),
    ]
