"""CPU accelerations as request parameters, and where each request ran.

Rows from before default to no acceleration (how they ran) and to a blank placement
(not recorded then).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("generations", "0005_prompt_search_index")]

    operations = [
        migrations.AddField(
            model_name="generationrequest",
            name="deep_cache_interval",
            field=models.PositiveSmallIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="token_merging",
            field=models.FloatField(default=0.0),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="device",
            field=models.CharField(blank=True, max_length=16),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="dtype",
            field=models.CharField(blank=True, max_length=16),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="torch_version",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="diffusers_version",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="placement_requested",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="placement_note",
            field=models.TextField(blank=True),
        ),
    ]
