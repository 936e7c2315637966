"""Who may read the monitoring views: staff users (session) or a bearer token.

Tokens are listed in ``TASKQUEUE["MONITORING_TOKENS"]`` and compared in constant time; they
are never logged or echoed back.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from enum import Enum
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from taskqueue.conf import settings as tq_settings


class Access(Enum):
    ANONYMOUS = "anonymous"  # no session, no token
    INVALID_TOKEN = "invalid_token"  # noqa: S105 (a state's name, not a secret)
    FORBIDDEN = "forbidden"  # logged in, but not staff
    GRANTED = "granted"


def bearer_token(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None without one)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def token_is_valid(token: str) -> bool:
    """Whether ``token`` is one of MONITORING_TOKENS (every one compared, in constant time)."""
    given = token.encode()
    matched = False
    for known in tq_settings.MONITORING_TOKENS or []:
        # No short-circuit: the time taken does not tell which token came close.
        matched |= hmac.compare_digest(given, str(known).encode())
    return matched and bool(token)


def check_access(request: HttpRequest) -> Access:
    """Staff session or a valid bearer token grants access; a token, if sent, must be valid."""
    token = bearer_token(request)
    if token is not None:
        return Access.GRANTED if token_is_valid(token) else Access.INVALID_TOKEN
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return Access.ANONYMOUS
    if user.is_active and user.is_staff:
        return Access.GRANTED
    return Access.FORBIDDEN


def denied_response(access: Access) -> JsonResponse:
    """401 (with ``WWW-Authenticate: Bearer``) for anonymous or bad tokens, 403 for non-staff."""
    if access is Access.FORBIDDEN:
        return JsonResponse(
            {"error": "forbidden", "detail": "Staff users or a monitoring token only."},
            status=403,
        )
    if access is Access.INVALID_TOKEN:
        response = JsonResponse(
            {"error": "invalid_token", "detail": "The bearer token is not valid."}, status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="taskqueue", error="invalid_token"'
        return response
    response = JsonResponse(
        {
            "error": "authentication_required",
            "detail": "Log in as a staff user, or send 'Authorization: Bearer <token>' with a "
            "token from TASKQUEUE['MONITORING_TOKENS'].",
        },
        status=401,
    )
    response["WWW-Authenticate"] = 'Bearer realm="taskqueue"'
    return response


def monitoring_access(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Decorator: staff session or bearer token, else a JSON 401/403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        access = check_access(request)
        if access is not Access.GRANTED:
            return denied_response(access)
        return view(request, *args, **kwargs)

    return wrapped
