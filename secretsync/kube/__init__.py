"""Kubernetes adapters: how secretsync reaches each cluster's API, and the home cluster's
Leases and Events."""
