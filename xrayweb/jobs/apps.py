from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "xrayweb.jobs"
    label = "jobs"
    verbose_name = "Jobs and quotas"
