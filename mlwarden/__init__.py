"""mlwarden: command line, supervisor and demo; re-exports the Python client."""

from shared.client import Client, Watcher

__all__ = ["Client", "Watcher"]
