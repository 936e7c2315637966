import taskqueue
from taskqueue.models import Task, TaskStatus


def test_enqueue_and_burst_worker_completes_task(run_worker):
    task = taskqueue.enqueue("add", {"a": 2, "b": 3})
    run_worker("--burst")
    task.refresh_from_db()
    assert task.status == TaskStatus.COMPLETED
    assert task.result == 5
    assert Task.objects.count() == 1
