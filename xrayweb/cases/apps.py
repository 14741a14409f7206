from django.apps import AppConfig


class CasesConfig(AppConfig):
    name = "xrayweb.cases"
    label = "cases"
