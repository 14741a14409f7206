from django.db import migrations, models


class Migration(migrations.Migration):
    """Trained model files move into Django storage: rows hold keys, not paths.

    ``lora_path`` becomes ``lora_key``; a row that still holds a host path is moved
    into storage, and its key rewritten, by ``manage.py media_to_storage``.
    """

    dependencies = [("generations", "0002_job_lifecycle")]

    operations = [
        migrations.RenameField("modelversion", "lora_path", "lora_key"),
        migrations.AlterField(
            model_name="modelversion",
            name="lora_key",
            field=models.CharField(
                blank=True, max_length=500, verbose_name="LoRA file (storage key)"
            ),
        ),
        migrations.AlterField(
            model_name="modelversion",
            name="source",
            field=models.CharField(
                help_text="Hub id, or a folder every worker has (the shipped models)",
                max_length=500,
            ),
        ),
        migrations.AddField(
            model_name="modelversion",
            name="files_key",
            field=models.CharField(
                blank=True,
                max_length=500,
                verbose_name="model folder (storage key prefix)",
            ),
        ),
        migrations.AddField(
            model_name="modelversion",
            name="files_sha256",
            field=models.CharField(
                blank=True, max_length=64, verbose_name="model folder manifest sha256"
            ),
        ),
    ]
