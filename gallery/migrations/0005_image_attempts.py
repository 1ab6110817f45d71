from django.db import migrations, models


class Migration(migrations.Migration):
    """A constant default, kept by the database: PostgreSQL adds the column without rewriting the
    table, and rows written by raw INSERT or COPY (the benches) get it too."""

    dependencies = [
        ("gallery", "0004_collection_counts"),
    ]

    operations = [
        migrations.AddField(
            model_name="image",
            name="attempts",
            field=models.PositiveSmallIntegerField(db_default=0, default=0),
        ),
    ]
