"""mlwarden: command line, supervisor and demo; re-exports the Python client."""
