"""mlwarden's shared package: event schemas, envelope, signing, bus topology, settings, client."""
