"""The API for every user: cases, model versions, generations and their own tokens.

Each action authenticates (token or session), validates with the web's own forms,
and calls the same services and selectors as the pages. Another user's objects are
not in any queryset here, so they answer 404 for every method.
"""

from __future__ import annotations

from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from xrayweb.api import serializers as out
from xrayweb.api import services as api_services
from xrayweb.api.common import (
    IDEMPOTENCY_PARAMETER,
    ByUid,
    NewestFirst,
    cleaned_query,
    idempotent,
)
from xrayweb.api.errors import QuotaRefused, field_error, form_invalid
from xrayweb.api.forms import bind
from xrayweb.api.models import ApiToken
from xrayweb.cases import selectors as case_selectors
from xrayweb.cases.forms import CaseFilterForm
from xrayweb.cases.models import Case, CaseImage
from xrayweb.generations import availability, selectors, services
from xrayweb.generations.forms import GenerationFilterForm, GenerationForm
from xrayweb.generations.models import GenerationRequest
from xrayweb.generations.views import png_response
from xrayweb.jobs.quotas import QuotaExceeded
from xrayweb.logins import tokens_locked_reason

PNG = OpenApiResponse(OpenApiTypes.BINARY, description="A PNG image")
PNG_RESPONSES = {(200, "image/png"): PNG}
CASE_IMAGE_KINDS = ("derivative", "original")
ID = "[0-9]{1,18}"  # within bigint: longer ids are simply not found


def _query(name: str, kind: object, description: str, **kwargs) -> OpenApiParameter:
    return OpenApiParameter(
        name, kind, OpenApiParameter.QUERY, description=description, **kwargs
    )


class ApiViewSet(viewsets.GenericViewSet):
    def _data(self, serializer: type, instance: object, many: bool = False) -> object:
        """``instance`` through ``serializer``, with links as absolute URLs."""
        return serializer(instance, many=many, context={"request": self.request}).data


# Cases ------------------------------------------------------------------------------


@extend_schema(tags=["cases"])
class CaseViewSet(ApiViewSet):
    """Imported IU X-ray cases: search them, read one, download its images."""

    pagination_class = ByUid
    serializer_class = out.CaseOut
    queryset = Case.objects.prefetch_related("images")

    @extend_schema(
        parameters=[
            _query("q", str, "Text in the uid, report or MeSH terms"),
            _query("mesh", str, "A MeSH term, e.g. Cardiomegaly"),
            _query("split", str, "train, val or test", enum=["train", "val", "test"]),
            _query(
                "view",
                str,
                "Cases with an image of this view",
                enum=["frontal", "lateral", "unknown"],
            ),
            _query("page_size", int, "Cases per page, at most 200"),
        ]
    )
    def list(self, request: Request) -> Response:
        filters = cleaned_query(CaseFilterForm(request.query_params))
        page = self.paginate_queryset(case_selectors.cases_filtered(**filters))
        return self.get_paginated_response(self._data(out.CaseOut, page, many=True))

    @extend_schema(responses=out.CaseDetailOut)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self._data(out.CaseDetailOut, self.get_object()))

    @extend_schema(
        parameters=[
            OpenApiParameter("image_pk", int, OpenApiParameter.PATH),
            _query(
                "kind",
                str,
                "derivative (256², the default) or original",
                enum=[*CASE_IMAGE_KINDS],
            ),
        ],
        responses=PNG_RESPONSES,
    )
    @action(
        detail=True, url_path=r"images/(?P<image_pk>[0-9]{1,18})\.png", url_name="image"
    )
    def image(self, request: Request, pk: str, image_pk: str) -> FileResponse:
        image = get_object_or_404(CaseImage, pk=image_pk, case_id=self.get_object().pk)
        kind = request.query_params.get("kind") or "derivative"
        if kind not in CASE_IMAGE_KINDS:
            raise field_error(
                "kind", f"must be derivative or original, got {kind[:100]!r}"
            )
        if not getattr(image, kind):
            raise Http404
        return png_response(getattr(image, kind), f"real_{image.image_id}")


# Model versions ---------------------------------------------------------------------


@extend_schema(tags=["models"])
class ModelVersionViewSet(ApiViewSet):
    """The model versions a user may pick, their defaults, and whether a live
    worker can run them now."""

    serializer_class = out.ModelVersionOut
    pagination_class = None

    @extend_schema(responses=out.ModelVersionOut(many=True))
    def list(self, request: Request) -> Response:
        versions = services.model_versions_offered(availability.availability())
        return Response(self._data(out.ModelVersionOut, versions, many=True))


# Generations ------------------------------------------------------------------------


@extend_schema(tags=["generations"])
class GenerationViewSet(ApiViewSet):
    """Your generation requests: submit, list, follow, cancel, rerun, download."""

    serializer_class = out.GenerationOut
    pagination_class = NewestFirst
    queryset = GenerationRequest.objects.none()  # the schema's id type; see below

    def get_queryset(self):
        return selectors.requests_of(user=self.request.user)

    @extend_schema(
        parameters=[
            _query("status", str, "queued, running, succeeded, failed or cancelled"),
            _query("model_version", int, "A model version id"),
            _query("case", int, "A case id"),
            _query("created_after", OpenApiTypes.DATETIME, "Created at or after"),
            _query("created_before", OpenApiTypes.DATETIME, "Created before"),
            _query("page_size", int, "Requests per page, at most 200"),
        ],
        responses=out.GenerationListOut(many=True),
    )
    def list(self, request: Request) -> Response:
        filters = cleaned_query(GenerationFilterForm(request.query_params))
        requests = selectors.requests_of(user=request.user, **filters)
        page = self.paginate_queryset(requests)
        return self.get_paginated_response(
            self._data(out.GenerationListOut, page, many=True)
        )

    @extend_schema(
        request=out.GenerationIn,
        responses={201: out.GenerationOut},
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    def create(self, request: Request) -> Response:
        return idempotent(request, lambda: self._create(request))

    def _create(self, request: Request) -> Response:
        known = availability.availability()
        version_id = (
            request.data.get("model_version")
            if isinstance(request.data, dict)
            else None
        )
        initial = services.generation_initial(known=known, version_id=version_id)
        form = bind(GenerationForm, request.data, defaults=initial, known=known)
        if not form.is_valid():
            raise form_invalid(form)
        try:
            created = services.generation_request_create(
                user=request.user,
                params=form.params(),
                model_version=form.cleaned_data["model_version"],
                case=form.cleaned_data["case"],
                prompt_in_png=form.cleaned_data["prompt_in_png"],
            )
        except QuotaExceeded as exc:
            raise QuotaRefused(str(exc)) from None
        return Response(self._detail(created.pk), status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self._detail(self.get_object().pk))

    def _detail(self, pk: int) -> dict:
        generation = self.get_queryset().get(pk=pk)
        generation.queue_position = selectors.queue_position(generation)
        return self._data(out.GenerationOut, generation)

    @extend_schema(request=None, responses=out.GenerationOut)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel a queued request, or stop a running one at its next step."""
        generation = self.get_object()
        error = services.generation_request_cancel(
            request_id=generation.pk, user=request.user
        )
        if error:
            raise field_error(None, error)
        return Response(self._detail(generation.pk))

    @extend_schema(
        request=None,
        responses={201: out.GenerationOut},
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    def rerun(self, request: Request, pk: str) -> Response:
        """A new request with exactly the same parameters, model and seed."""
        generation = self.get_object()
        return idempotent(request, lambda: self._rerun(request, generation))

    def _rerun(self, request: Request, generation: GenerationRequest) -> Response:
        try:
            rerun = services.generation_request_rerun(
                request=generation, user=request.user
            )
        except QuotaExceeded as exc:
            raise QuotaRefused(str(exc)) from None
        except services.ModelWithdrawn as exc:
            raise field_error("model_version", str(exc)) from None
        return Response(self._detail(rerun.pk), status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("index", int, OpenApiParameter.PATH)],
        responses=PNG_RESPONSES,
    )
    @action(
        detail=True, url_path=r"images/(?P<index>[0-9]{1,5})\.png", url_name="image"
    )
    def image(self, request: Request, pk: str, index: str) -> FileResponse:
        """One generated image, as the worker stored it (with its PNG text chunks)."""
        image = get_object_or_404(self.get_object().images, index=int(index))
        return png_response(image.image, f"synthetic_{image.request_id}_{image.pk}")

    @extend_schema(
        parameters=[OpenApiParameter("index", int, OpenApiParameter.PATH)],
        responses=PNG_RESPONSES,
    )
    @action(
        detail=True, url_path=r"images/(?P<index>[0-9]{1,5})/diff\.png", url_name="diff"
    )
    def diff(self, request: Request, pk: str, index: str) -> FileResponse:
        """The image's difference map against the case's frontal image."""
        image = get_object_or_404(self.get_object().images, index=int(index))
        if not image.diff_map:
            raise Http404
        return png_response(image.diff_map, f"diff_{image.request_id}_{image.pk}")


# Tokens -----------------------------------------------------------------------------


@extend_schema(tags=["tokens"])
class TokenViewSet(ApiViewSet):
    """Your API tokens: create one (its key is shown once), list, revoke."""

    lookup_value_regex = ID

    serializer_class = out.TokenOut
    pagination_class = None
    queryset = ApiToken.objects.none()  # the schema's id type; see below

    def get_queryset(self):
        return api_services.api_tokens_of(self.request.user)

    @extend_schema(responses=out.TokenOut(many=True))
    def list(self, request: Request) -> Response:
        return Response(self._data(out.TokenOut, self.get_queryset(), many=True))

    @extend_schema(request=out.TokenIn, responses={201: out.TokenCreatedOut})
    def create(self, request: Request) -> Response:
        given = out.TokenIn(data=request.data)
        given.is_valid(raise_exception=True)
        if locked := tokens_locked_reason(request._request, request.user):
            raise PermissionDenied(locked)
        try:
            new = api_services.api_token_create(
                user=request.user, **given.validated_data
            )
        except ValueError as exc:
            raise field_error("expires_days", str(exc)) from None
        body = {**self._data(out.TokenOut, new.token), "key": new.key}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        """Revoke the token: requests with it get 401 from now on."""
        try:
            api_services.api_token_revoke(user=request.user, token_id=int(pk))
        except LookupError:
            raise Http404 from None
        return Response(status=status.HTTP_204_NO_CONTENT)
