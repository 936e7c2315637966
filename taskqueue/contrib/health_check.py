"""A django-health-check (4.x) plugin: the task queue's health on the project's health page.

Install the extra (``pip install taskqueue[health-check]``) and list the check with the
others::

    path("ht/", HealthCheckView.as_view(checks=[
        "health_check.checks.Database",
        "taskqueue.contrib.health_check.TaskQueueHealthCheck",
        # or, to make a degraded queue a warning (which django-health-check 4 also answers
        # with 500): ("taskqueue.contrib.health_check.TaskQueueHealthCheck",
        #             {"degraded_is_warning": True}),
    ])),

An unhealthy queue raises ``ServiceUnavailable`` with the reasons; a degraded one passes
(the reasons are logged) unless ``degraded_is_warning`` is set, then raises ``ServiceWarning``.
"""

from __future__ import annotations

import dataclasses
import logging

from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from taskqueue.monitoring import health

logger = logging.getLogger("taskqueue.monitoring.health")


@dataclasses.dataclass
class TaskQueueHealthCheck(HealthCheck):
    """The verdict of ``taskqueue.monitoring.health.check()``."""

    degraded_is_warning: bool = False

    def run(self) -> None:
        verdict = health.check()
        reasons = "; ".join(issue.message for issue in verdict.issues)
        if verdict.status == health.UNHEALTHY:
            raise ServiceUnavailable(f"task queue unhealthy: {reasons}")
        if verdict.status == health.DEGRADED:
            if self.degraded_is_warning:
                raise ServiceWarning(f"task queue degraded: {reasons}")
            logger.warning("task queue degraded: %s", reasons)
