from django.apps import AppConfig


class TrainingAppConfig(AppConfig):
    name = "xrayweb.training"
    label = "training"
