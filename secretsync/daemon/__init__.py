"""The long-running service: cycles, webhooks, status, metrics, shards and its HTTP edge."""
