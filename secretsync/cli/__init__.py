"""The `secretsync` command line."""
