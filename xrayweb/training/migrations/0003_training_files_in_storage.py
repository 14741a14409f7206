from django.db import migrations, models


def prefix_from_pk(apps, schema_editor):
    TrainingRun = apps.get_model("training", "TrainingRun")
    for run in TrainingRun.objects.only("pk"):
        TrainingRun.objects.filter(pk=run.pk).update(files_key=f"training/{run.pk}/")


class Migration(migrations.Migration):
    """A run's files move from a host folder (``output_dir``) into Django storage
    under ``training/<id>/``; ``manage.py media_to_storage`` copies old folders."""

    dependencies = [("training", "0002_job_lifecycle")]

    operations = [
        migrations.RenameField("trainingrun", "output_dir", "files_key"),
        migrations.AlterField(
            model_name="trainingrun",
            name="files_key",
            field=models.CharField(
                blank=True, max_length=500, verbose_name="files (storage key prefix)"
            ),
        ),
        migrations.RunPython(prefix_from_pk, migrations.RunPython.noop),
    ]
