from django.apps import AppConfig


class GenerationsConfig(AppConfig):
    name = "xrayweb.generations"
    label = "generations"
