import os

from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "bench.benchapp"
    label = "benchapp"

    def ready(self) -> None:
        # Only the profiling run asks for it: counting adds a little work to every statement.
        path = os.environ.get("TASKQUEUE_BENCH_COUNT_STATEMENTS")
        if path:
            from bench.statements import install_statement_counter

            install_statement_counter(path)
