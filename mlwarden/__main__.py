"""`python -m mlwarden` is the `mlwarden` command."""

from mlwarden.cli import main

raise SystemExit(main())
