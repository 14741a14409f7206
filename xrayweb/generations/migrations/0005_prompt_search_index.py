"""A trigram index for the history's prompt search, on PostgreSQL only.

Django's icontains is ``UPPER(prompt::text) LIKE UPPER('%...%')`` on PostgreSQL, so the
index is on that expression. Without it a rare word reads every request of the user
(bench/chaos.py H: 400 ms at 100,000 rows). SQLite has no such index: a search there
scans, which suits the small databases it serves.
"""

from django.db import migrations

CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS generations_request_prompt_trgm "
    "ON generations_generationrequest USING gin (UPPER(prompt::text) gin_trgm_ops)",
]
DROP = ["DROP INDEX IF EXISTS generations_request_prompt_trgm"]


def run(statements):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements:
            schema_editor.execute(statement)

    return apply


class Migration(migrations.Migration):
    dependencies = [("generations", "0004_h17_permissions")]

    operations = [migrations.RunPython(run(CREATE), run(DROP))]
