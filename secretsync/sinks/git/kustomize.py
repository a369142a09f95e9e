"""Each cluster folder's `kustomization.yaml`: the files secretsync wrote, and every foreign file
kept listed."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping

from secretsync.core.model import ObjectKey
from secretsync.delivery import emit
from secretsync.sinks.git.files import _DIR_FLAGS, _read, _refusal, _Refused, _stage
from secretsync.sinks.git.manifests import _HEADER, KUSTOMIZATION, _observe_file, _parse
from secretsync.sinks.git.tree import GitTree

log = logging.getLogger(__name__)


class GitKustomizations(GitTree):
    """Each cluster folder's `kustomization.yaml`: the files secretsync wrote, and every foreign
    file kept listed."""

    def _write_kustomization(
        self, cluster: str, folder: int, paths: Mapping[ObjectKey, str], *, durable: bool
    ) -> bool:
        """Write `kustomization.yaml` (atomically) listing what `paths` names and the foreign
        entries that still exist, or unlink it when nothing is left; whether one remains.
        `durable`: sync the folder after, so that the new listing is on disk before files it
        no longer names are unlinked."""
        owned = set(paths.values())
        where = os.path.join(self._where(cluster), KUSTOMIZATION)
        try:
            st, existing = _read(KUSTOMIZATION, dir_fd=folder)
        except FileNotFoundError:
            st, existing = None, None
        except OSError as exc:
            raise _refusal(exc, where, name=KUSTOMIZATION, dir_fd=folder) from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise _Refused(where, "output path is not a regular file or folder")
        data = self._kustomization(cluster, sorted(owned))
        if existing is not None and existing != data:
            # the file lists more than secretsync's files (or is older): keep foreign entries
            old = _parse(existing) or {}
            resources = old.get("resources")
            if isinstance(resources, list):
                foreign = {
                    r
                    for r in resources
                    if isinstance(r, str) and r not in owned and self._foreign(folder, cluster, r)
                }
                data = self._kustomization(cluster, sorted(owned | foreign))
        if data is None:
            if st is not None:
                os.unlink(KUSTOMIZATION, dir_fd=folder)
                self._count()
                if durable:
                    os.fsync(folder)
            return False
        if existing == data:
            return True
        tmp = _stage(KUSTOMIZATION, data, dir_fd=folder)
        os.sync()
        os.replace(tmp, KUSTOMIZATION, src_dir_fd=folder, dst_dir_fd=folder)
        self._count()
        if durable:
            os.fsync(folder)
        return True

    @staticmethod
    def _kustomization(cluster: str, resources: list[str]) -> bytes | None:
        if not resources:
            return None
        # what dump_yaml writes for {apiVersion, kind, resources}, without its generic walk
        # (this runs for every cluster on every render, changed or not)
        lines = [
            _HEADER.format(cluster=cluster),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
            *(f"- {emit.scalar(r)}\n" for r in resources),
        ]
        return "".join(lines).encode("utf-8")

    @staticmethod
    def _foreign(folder: int, cluster: str, resource: str) -> bool:
        """Whether a `kustomization.yaml` entry secretsync did not write names something that
        exists in the cluster folder and is not secretsync's. Entries leaving the folder
        (absolute, `..`, URLs) are dropped unread; no symlink on the way is followed, only a
        regular file is read."""
        parts = resource.split("/")
        if any(p in ("", os.curdir, os.pardir) for p in parts):
            return False
        fd = folder
        try:
            for part in parts[:-1]:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if fd != folder:
                    os.close(fd)
                fd = inner
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return True  # a folder (or another entry): listed as it is, never read
            _, data = _read(parts[-1], dir_fd=fd)
        except (OSError, ValueError):  # ValueError: a NUL byte in the entry
            return False
        finally:
            if fd != folder:
                os.close(fd)
        observed = None if data is None else _observe_file(cluster, data, detail=False)
        return observed is None or not observed.owned
