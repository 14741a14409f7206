"""JSON bodies through the web's own forms, so the API refuses exactly what the web
refuses, with the same messages naming the bad value."""

from __future__ import annotations

from django import forms

from xrayweb.api.errors import field_error
from xrayweb.generations.forms import NOT_A_NUMBER

NOT_AN_OBJECT = "The request body must be a JSON object, got {kind}."
UNKNOWN_FIELD = "Unknown field {name!r}; the fields are: {known}."
NOT_TEXT = "{name} must be text, got {value!r}"
NOT_A_LIST = "{name} must be a list, got {value!r}"
NOT_ONE_VALUE = "{name} must be a single value, got {value!r}"
NOT_BOOLEAN = "{name} must be true or false, got {value!r}"
_NUMBERS = {"number": (int, float), "whole number": (int,)}
LIST_FIELDS = (forms.MultipleChoiceField, forms.ModelMultipleChoiceField)
TEXT_FIELDS = (forms.CharField, forms.ChoiceField)
ID_FIELDS = (forms.ModelChoiceField, forms.TypedChoiceField)  # choices by id: numbers


def form_initial(form_class: type[forms.Form]) -> dict:
    """The values the web form starts with, from its fields' ``initial``."""
    fields = form_class.base_fields.items()
    return {name: f.initial for name, f in fields if f.initial is not None}


def bind(
    form_class: type[forms.Form],
    data: object,
    *,
    defaults: dict | None = None,
    fields: tuple[str, ...] | None = None,
    **kwargs: object,
) -> forms.Form:
    """``form_class`` bound to a JSON body: the form's own initial values, then
    ``defaults``, then what was sent. ``fields``: the names a body may hold (all of
    the form's by default). A body that is not an object, an unknown field, or a
    value of the wrong JSON shape is a 400 naming it."""
    if not isinstance(data, dict):
        raise field_error(None, NOT_AN_OBJECT.format(kind=type(data).__name__))
    allowed = fields or tuple(form_class.base_fields)
    for name, value in data.items():
        if name not in allowed:
            known = ", ".join(allowed)
            raise field_error(name, UNKNOWN_FIELD.format(name=name[:100], known=known))
        _shape_check(name, form_class.base_fields[name], value)
    values = {**form_initial(form_class), **(defaults or {})}
    values.update({name: "" if v is None else v for name, v in data.items()})
    return form_class(data=values, **kwargs)


def _shape_check(name: str, field: forms.Field, value: object) -> None:
    if isinstance(field, LIST_FIELDS):
        if not isinstance(value, list):
            raise field_error(name, NOT_A_LIST.format(name=name, value=_short(value)))
        return
    if isinstance(value, list | dict):
        raise field_error(name, NOT_ONE_VALUE.format(name=name, value=_short(value)))
    if value is None:
        return  # null: the field left blank
    text = isinstance(field, TEXT_FIELDS) and not isinstance(field, ID_FIELDS)
    if text and not isinstance(value, str):
        raise field_error(name, NOT_TEXT.format(name=name, value=_short(value)))
    kind = _number_kind(field)
    if kind and (isinstance(value, bool) or not isinstance(value, _NUMBERS[kind])):
        message = NOT_A_NUMBER.format(name=name, kind=kind, value=_short(value))
        raise field_error(name, message)
    if isinstance(field, forms.BooleanField) and not isinstance(value, bool):
        raise field_error(name, NOT_BOOLEAN.format(name=name, value=_short(value)))


def _number_kind(field: forms.Field) -> str | None:
    """The JSON number a field takes ("number" or "whole number"), if any: the
    form alone would read "12" as 12, and "no" as true for a checkbox."""
    if isinstance(field, forms.FloatField):  # a subclass of IntegerField
        return "number"
    if isinstance(field, forms.IntegerField | forms.ModelChoiceField):
        return "whole number"  # ModelChoiceField: an id
    return None


def _short(value: object) -> object:
    text = repr(value)
    return value if len(text) <= 100 else text[:100] + "…"
