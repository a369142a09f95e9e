"""Commits of the output folder (`repo`, `commit`) and the daemon's push of them (`push`): the
GitOps write-back."""
