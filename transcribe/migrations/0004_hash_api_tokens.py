"""API tokens are stored as SHA-256 digests; existing keys are hashed in place (they keep working)."""

import hashlib

from django.db import migrations, models


def hash_keys(apps, schema_editor):
    ApiToken = apps.get_model("transcribe", "ApiToken")
    for token in list(ApiToken.objects.all()):
        key = token.digest
        if len(key) == 64:
            continue  # already a digest
        ApiToken.objects.filter(digest=key).update(
            digest=hashlib.sha256(key.encode()).hexdigest(), prefix=key[:8]
        )


class Migration(migrations.Migration):
    dependencies = [("transcribe", "0003_draining_lease")]

    operations = [
        migrations.RenameField("apitoken", "key", "digest"),
        migrations.AlterField(
            "apitoken",
            "digest",
            models.CharField(editable=False, max_length=64, primary_key=True, serialize=False, verbose_name="digest"),
        ),
        migrations.AddField(
            "apitoken",
            "prefix",
            models.CharField(default="", editable=False, max_length=8, verbose_name="key starts with"),
            preserve_default=False,
        ),
        migrations.RunPython(hash_keys, migrations.RunPython.noop),
    ]
