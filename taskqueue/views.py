"""Monitoring views: the stats and health JSON (mounted by ``taskqueue.urls``)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from taskqueue.conf import settings as tq_settings
from taskqueue.monitoring import health, stats
from taskqueue.monitoring.auth import Access, check_access, denied_response, monitoring_access


@require_GET
@never_cache
@monitoring_access
def stats_view(request: HttpRequest) -> HttpResponse:
    """Counts, rates, percentiles, workers, circuits and late schedules; ``?window=`` seconds."""
    try:
        window = stats.parse_window(request.GET.get("window"))
    except stats.StatsError as exc:
        return JsonResponse({"error": "bad_request", "detail": str(exc)}, status=400)
    return JsonResponse(stats.collect(window))


@require_GET
@never_cache
def health_view(request: HttpRequest) -> HttpResponse:
    """200 healthy/degraded, 503 unhealthy. With HEALTH["PUBLIC"], anyone gets the verdict,
    and the issues only with staff or token access."""
    access = check_access(request)
    public = bool(tq_settings.HEALTH.get("PUBLIC"))
    if access is not Access.GRANTED and not (public and access is not Access.INVALID_TOKEN):
        return denied_response(access)
    verdict = health.check()
    return JsonResponse(
        verdict.as_dict(details=access is Access.GRANTED), status=verdict.http_status
    )


@require_GET
@never_cache
@monitoring_access
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics (the "prometheus" extra). Imported on the first scrape, so that a
    project without prometheus-client can still include taskqueue.urls; without it, a scrape
    raises ImproperlyConfigured naming the extra."""
    # why: prometheus-client is optional; import it on the first scrape only
    from taskqueue.monitoring.prometheus import metrics_response

    return metrics_response(request)
