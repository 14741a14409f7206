"""The groups that grant staff actions (xrayweb/jobs/permissions.py): trainers,
data stewards and operators, each with its permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUPS = {
    "trainers": ("training.start_training", "training.start_evaluation"),
    "data stewards": ("cases.run_import",),
    "operators": ("jobs.cancel_any_job", "generations.activate_modelversion"),
}


def create_groups(apps, schema_editor):
    # Permissions are made after all migrations ran; these groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.add(
                Permission.objects.get(
                    content_type__app_label=app_label, codename=codename
                )
            )


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("jobs", "0003_userquota_api_rates"),
        ("training", "0004_h17_permissions"),
        ("cases", "0004_h17_permissions"),
        ("generations", "0004_h17_permissions"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
