"""The five mlwarden services, one sub-package each."""
