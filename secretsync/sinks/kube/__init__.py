"""The Kubernetes sink: objects applied through each cluster's API (`sink`), what it observes
(`observe`), its API calls (`calls`) and the kinds it writes (`kinds`)."""
