from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xrayweb.settings")
application = get_wsgi_application()
# Import every view now, as the server process starts, rather than on its first
# request: otherwise the first user each web worker serves waits for the imports.
get_resolver().url_patterns  # noqa: B018
