"""Handler slots: the thread pool, the process pool and what they share."""
