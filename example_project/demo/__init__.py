"""Demo handlers, the index page and the ``demo_feed`` command."""
