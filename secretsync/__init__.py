"""secretsync: distribute secrets to a fleet of Kubernetes clusters from one Git repository."""

__version__ = "0.1.0"
