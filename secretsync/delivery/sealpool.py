"""Sealing on worker processes, for renders that seal thousands of values.

A seal is one RSA-OAEP public operation (about 70 µs with a 4,096-bit key) and `cryptography`
holds the GIL while it runs (measured: two threads seal no faster than one, and slow every other
thread down), so only processes put a second core to work.

The workers are plain child processes running `serve()` (`python -I -c …`): not
`multiprocessing`, whose spawned children import the parent's `__main__` again (a script
without a main guard would run its render once more inside each worker). They get an empty
environment but for PATH, so no credential of the parent reaches them. Per request they get a
public key (DER) and (OAEP label, plaintext) pairs over a pipe, and answer the sealed strings in
order; they write nothing else and keep only public keys. Frames are a 4-byte length and a
request (id, key, length-prefixed labels and values) or an answer (id, sealed strings).

Two threads per worker move the frames (a writer, so a big request never waits on an unread
answer, and a reader), both blocked in pipe I/O without the GIL nearly all the time. Any
failure of a worker (it died, a broken pipe) seals the rest in this process instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Generator, Sequence
from typing import IO, Final

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from secretsync.delivery import seal

log = logging.getLogger(__name__)

type Job = tuple[bytes, bytes]
"""(OAEP label, plaintext)."""

CHUNK: Final = 64
"""Seals per request: a few milliseconds of work, so answers stream back while others run."""

_HEADER: Final = 4
_PIPE_BYTES: Final = 1024 * 1024  # F_SETPIPE_SZ: room for many answers before a worker waits
_SETPIPE: Final[int | None] = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl else None


def public_der(key: RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def default_workers() -> int:
    """One worker per usable core, when there are at least two (with one core, the pool would
    only add copying)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores if cores >= 2 else 0


# --- the worker side -------------------------------------------------------------------------


_HEAD: Final = struct.Struct(">QI")  # request id, count (or DER length)
_LEN: Final = struct.Struct(">I")
_PAIR: Final = struct.Struct(">II")


def encode_request(request: int, der: bytes, jobs: Sequence[Job]) -> bytes:
    parts = [_HEAD.pack(request, len(der)), der, _LEN.pack(len(jobs))]
    for label, plaintext in jobs:
        parts += (_PAIR.pack(len(label), len(plaintext)), label, plaintext)
    return b"".join(parts)


def decode_request(frame: bytes) -> tuple[int, bytes, list[Job]]:
    request, size = _HEAD.unpack_from(frame)
    at = _HEAD.size
    der = frame[at : at + size]
    at += size
    (count,) = _LEN.unpack_from(frame, at)
    at += _LEN.size
    jobs: list[Job] = []
    for _ in range(count):
        label_len, plain_len = _PAIR.unpack_from(frame, at)
        at += _PAIR.size
        label = frame[at : at + label_len]
        at += label_len
        jobs.append((label, frame[at : at + plain_len]))
        at += plain_len
    if at != len(frame):
        raise ValueError("malformed request")
    return request, der, jobs


def encode_answer(request: int, sealed: Sequence[str]) -> bytes:
    parts = [_HEAD.pack(request, len(sealed))]
    for text in sealed:
        raw = text.encode("ascii")
        parts += (_LEN.pack(len(raw)), raw)
    return b"".join(parts)


def decode_answer(frame: bytes) -> tuple[int, list[str]]:
    request, count = _HEAD.unpack_from(frame)
    at = _HEAD.size
    sealed: list[str] = []
    for _ in range(count):
        (size,) = _LEN.unpack_from(frame, at)
        at += _LEN.size
        sealed.append(frame[at : at + size].decode("ascii"))
        at += size
    if at != len(frame):
        raise ValueError("malformed answer")
    return request, sealed


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_HEADER)
    if len(header) < _HEADER:
        return None
    size = int.from_bytes(header, "big")
    body = stream.read(size)
    if len(body) < size:
        return None
    return body


def _write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(len(body).to_bytes(_HEADER, "big") + body)
    stream.flush()


def serve() -> None:
    """A worker: requests on stdin, answers on stdout, until stdin closes."""
    keys: dict[bytes, RSAPublicKey] = {}
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while (frame := _read_frame(inp)) is not None:
        request, der, jobs = decode_request(frame)
        key = keys.get(der)
        if key is None:
            loaded = serialization.load_der_public_key(der)
            if not isinstance(loaded, RSAPublicKey):
                raise TypeError("not an RSA public key")
            key = keys[der] = loaded
        sealed = [seal.seal_value(key, plaintext, label=label) for label, plaintext in jobs]
        _write_frame(out, encode_answer(request, sealed))


# --- the parent side -------------------------------------------------------------------------


def _answer(frame: bytes | _Failed, *, request: int, count: int) -> list[str] | None:
    """The sealed strings of a frame, if it answers `request` with `count` of them."""
    if isinstance(frame, _Failed):
        return None
    try:
        answered, sealed = decode_answer(frame)
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    return sealed if answered == request and len(sealed) == count else None


class _Failed:
    """What a reader puts in place of an answer when its worker is gone."""


_FAILED: Final = _Failed()


class _Worker:
    def __init__(self) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (
            f"import sys; sys.path.insert(0, {package_root!r}); "
            "from secretsync.delivery.sealpool import serve; serve()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a traceback could quote what it was given
            env={"PATH": os.environ.get("PATH", os.defpath)},
            close_fds=True,
        )
        if self.proc.stdin is None or self.proc.stdout is None:
            raise OSError("no pipe to the seal worker")
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if _SETPIPE is not None:
            for stream in (self.stdin, self.stdout):
                with contextlib.suppress(OSError):
                    fcntl.fcntl(stream.fileno(), _SETPIPE, _PIPE_BYTES)
        self.requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.answers: queue.SimpleQueue[bytes | _Failed] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="seal-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="seal-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        stdin = self.stdin
        try:
            while (body := self.requests.get()) is not None:
                _write_frame(stdin, body)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()

    def _read(self) -> None:
        try:
            # decoded by the caller: the strings are then allocated by the thread that keeps
            # them (one malloc arena), not here (measured: +80 MiB peak over a long render)
            while (frame := _read_frame(self.stdout)) is not None:
                self.answers.put(frame)
        except (OSError, ValueError):
            pass
        self.answers.put(_FAILED)  # end of answers: a worker only stops when told to

    def close(self) -> None:
        self.requests.put(None)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._writer.join(timeout=10)
        self._reader.join(timeout=10)
        with contextlib.suppress(OSError):
            self.stdout.close()


class SealPool:
    """Seals batches of values with one public key on `workers` processes."""

    def __init__(self, workers: int, *, threshold: int = 256) -> None:
        self.workers = workers
        self.threshold = threshold
        self._procs: list[_Worker] = []
        self._broken = False
        self._next = 0  # request ids: an answer is used only for the request it answers

    @property
    def usable(self) -> bool:
        return self.workers > 0 and not self._broken

    def worth(self, seals: int) -> bool:
        """Whether `seals` seals should go to the workers: `threshold` or more to start them,
        more than one chunk once they run."""
        return self.usable and seals >= (CHUNK if self._procs else self.threshold)

    def _start(self) -> list[_Worker]:
        while len(self._procs) < self.workers:
            self._procs.append(_Worker())  # on a failure, close() ends those already started
        return self._procs

    def seal(self, key: RSAPublicKey, jobs: Sequence[Job]) -> Generator[list[str]]:
        """The sealed values of `jobs`, chunk by chunk (`CHUNK` each, in order), so the caller
        can use each chunk while the workers seal the next ones."""
        chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
        first, self._next = self._next, self._next + len(chunks)
        procs: list[_Worker] = []
        sent = taken = 0
        try:
            if self.usable:
                try:
                    procs = self._start()
                    der = public_der(key)
                    for i, chunk in enumerate(chunks):  # round robin: answers come in order
                        procs[i % len(procs)].requests.put(encode_request(first + i, der, chunk))
                        sent += 1
                except OSError as exc:
                    self._fail(exc)
            for i, chunk in enumerate(chunks):
                if not self._broken and i < sent:
                    frame = procs[i % len(procs)].answers.get()
                    taken += 1
                    sealed = _answer(frame, request=first + i, count=len(chunk))
                    if sealed is not None:
                        yield sealed
                        continue
                    self._fail(None)
                yield [seal.seal_value(key, plaintext, label=label) for label, plaintext in chunk]
        finally:
            if taken < sent and not self._broken:
                self.close()  # left before every answer was taken: none may be taken later

    def _fail(self, exc: BaseException | None) -> None:
        if not self._broken:
            reason = type(exc).__name__ if exc is not None else "a worker stopped"
            log.warning("seal workers failed (%s); sealing in this process", reason)
        self._broken = True
        self.close()

    def close(self) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            proc.close()
