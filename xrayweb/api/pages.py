"""The page where users make, list and revoke their API tokens."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from xrayweb.api import services
from xrayweb.generations.forms import NamedIntegerField
from xrayweb.logins import tokens_locked_reason


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, required=False, help_text="What the token is for, e.g. a script"
    )
    expires_days = NamedIntegerField(
        required=False,
        label="Expires after (days)",
        min_value=1,
        max_value=services.MAX_EXPIRY_DAYS,
        help_text="Blank: never expires",
    )


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    user = request.user
    form = TokenForm(request.POST if "revoke" not in request.POST else None)
    context: dict = {}
    if request.method == "POST" and "revoke" in request.POST:
        _revoke(request, request.POST["revoke"])
        return redirect("api_tokens")
    if request.method == "POST" and (locked := tokens_locked_reason(request, user)):
        messages.error(request, locked)
        return redirect("api_tokens")
    if request.method == "POST" and form.is_valid():
        new = services.api_token_create(user=request.user, **form.cleaned_data)
        context = {"new_token": new.token, "new_key": new.key}
        form = TokenForm()
    tokens_of = services.api_tokens_of(request.user)
    return render(
        request, "api/tokens.html", {"form": form, "tokens": tokens_of, **context}
    )


def _revoke(request: HttpRequest, text: str) -> None:
    try:
        services.api_token_revoke(user=request.user, token_id=int(text))
    except (ValueError, LookupError):
        messages.error(request, services.NO_SUCH_TOKEN.format(id=text[:30]))
    else:
        messages.success(request, "Token revoked: requests with it now get 401.")
