"""The fleet repo: where its paths may point, loading it into the model, planning, scanning,
the cluster registry commands, and pulling it from Git."""
