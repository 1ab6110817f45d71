# Each image's copy signature (gallery.imaging.copy_signature), recorded by the workers with its
# thumbnail, and the HNSW index that finds an image's copies. The column starts empty, so the index
# is built at once whatever the table holds; `manage.py rebuild_thumbnails` fills it for the images
# indexed before.

import pgvector.django.halfvec
import pgvector.django.indexes
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0008_image_names_one_line'),
        ('search', '0001_initial'),  # creates the vector extension, whose halfvec type the column is
    ]

    operations = [
        migrations.AddField(
            model_name='image',
            name='signature',
            field=pgvector.django.halfvec.HalfVectorField(blank=True, dimensions=384, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name='image',
            index=pgvector.django.indexes.HnswIndex(ef_construction=64, fields=['signature'], m=16, name='image_signature_hnsw', opclasses=['halfvec_cosine_ops']),
        ),
    ]
