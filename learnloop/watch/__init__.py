"""Watch and steer: status, health, metrics, alerts and the queries the dashboard shows."""

from learnloop.watch.status import build_status

__all__ = ["build_status"]
