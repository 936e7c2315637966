from django.db import models


class LedgerEntry(models.Model):
    """One row per execution of the 'ledger' handler."""

    n = models.IntegerField()
    pid = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.n} by {self.pid}"


class Counter(models.Model):
    key = models.CharField(max_length=100, unique=True)
    value = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.key}={self.value}"
