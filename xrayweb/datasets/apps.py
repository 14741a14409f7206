from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "xrayweb.datasets"
    label = "datasets"
