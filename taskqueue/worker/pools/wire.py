"""The JSON messages between a worker and its child processes (no pickle)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from taskqueue.core.outcome import Outcome, OutcomeKind
from taskqueue.store import ClaimedTask


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def task_message(task: ClaimedTask) -> dict[str, Any]:
    return {
        "kind": "task",
        "id": str(task.id),
        "task_type": task.task_type,
        "queue": task.queue,
        "payload": task.payload,
        "priority": task.priority,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "retry": task.retry,
        "timeout": task.timeout,
        "lease_id": str(task.lease_id),
        "started_at": task.started_at.isoformat() if task.started_at else None,
    }


def task_from_message(message: dict[str, Any]) -> ClaimedTask:
    started_at = message["started_at"]
    return ClaimedTask(
        id=uuid.UUID(message["id"]),
        task_type=message["task_type"],
        queue=message["queue"],
        payload=message["payload"],
        priority=message["priority"],
        attempts=message["attempts"],
        max_attempts=message["max_attempts"],
        retry=message["retry"],
        timeout=message["timeout"],
        lease_id=uuid.UUID(message["lease_id"]),
        started_at=datetime.fromisoformat(started_at) if started_at else None,
    )


def outcome_message(outcome: Outcome) -> dict[str, Any]:
    return {
        "kind": "outcome",
        "outcome": outcome.kind,
        "duration": outcome.duration,
        "result": outcome.result,
        "delay": outcome.delay,
        "error_type": outcome.error_type,
        "error": outcome.error,
        "traceback": outcome.traceback,
        "attempt_outcome": outcome.attempt_outcome,
    }


def outcome_from_message(message: dict[str, Any]) -> Outcome:
    return Outcome(
        kind=OutcomeKind(message["outcome"]),
        duration=message["duration"],
        result=message["result"],
        delay=message["delay"],
        error_type=message["error_type"],
        error=message["error"],
        traceback=message["traceback"],
        attempt_outcome=message["attempt_outcome"],
    )
