from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="WorkerPresence",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                ("name", models.CharField(max_length=200, unique=True)),
                ("queues", models.JSONField(default=list)),
                (
                    "model_versions",
                    models.JSONField(default=list, help_text="ids it can load"),
                ),
                ("seen_at", models.DateTimeField()),
            ],
            options={"verbose_name": "worker", "ordering": ["name"]},
        ),
    ]
