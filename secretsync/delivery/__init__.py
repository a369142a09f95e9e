"""Delivery: what each cluster receives (SealedSecret, ExternalSecret, Secret), sealing included."""
