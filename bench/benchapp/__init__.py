"""The benchmark's handlers, discovered by workers like any project's ``tasks.py``."""
