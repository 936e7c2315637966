"""Side duties of a worker (heartbeat, rescue, schedules, ...) and the thread that runs them."""
