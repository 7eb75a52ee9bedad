"""Where the worker processes were in the first layout; they live in ``dpnet.workers``
now (installed with dpnet). These launchers keep ``python -m workers.<kind>_worker``
working from a checkout."""
