"""Bad samples: skipped and counted (``dataset.on_bad_sample = "skip"``) or a clear error (``"error"``).

A dataset format raises :class:`BadSample` where it meets unusable data; the loader hands it to
a :class:`BadSampleLog`, which either raises :class:`core.errors.DataError` naming the path and
reason (``error``), or counts it per reason and appends ``{"path", "reason", "detail", "rank",
"phase", "epoch"}`` to ``results_dir/bad_samples.jsonl`` (``skip``): ``phase`` is ``train``, ``val``,
``evaluate`` or ``inference``, ``epoch`` the training epoch (null outside training). Each line is one ``O_APPEND`` write,
so ranks and worker processes can share the file without interleaving.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Literal

from core.errors import DataError

log = logging.getLogger("clipcore.data")

FILE_NAME = "bad_samples.jsonl"

# The reasons a sample can be skipped for (the ``reason`` field of bad_samples.jsonl).
REASONS = {
    "empty-file": "the image file is empty (0 bytes)",
    "corrupt-image": "the image cannot be decoded",
    "truncated-image": "the image file is truncated",
    "pixel-limit": "the image has more pixels than dataset.max_image_pixels",
    "missing-image": "the image file does not exist",
    "missing-caption": "the image has no caption file",
    "empty-caption": "the caption is empty or only whitespace",
    "caption-not-utf8": "the caption is not valid UTF-8",
    "unreadable-tar-member": "a tar archive member cannot be read",
    "bad-box": "a detection box has no area or lies outside its image",
    "missing-shard": "a shard does not exist",
    "unreachable-shard": "a shard cannot be opened or read",
}


class BadSample(Exception):
    """One unusable sample (or shard): ``reason`` is a key of :data:`REASONS`, ``detail`` the
    specifics (exception text, sizes); ``path`` may be filled in by the caller that knows it."""

    def __init__(self, reason: str, detail: str = "", path: str | None = None):
        assert reason in REASONS, reason
        self.reason, self.detail, self.path = reason, detail, path
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # picklable, so it can cross from a loader worker process
        return BadSample, (self.reason, self.detail, self.path)

    def record(self, path: str | None = None) -> dict[str, str]:
        """The plain record a worker process sends back to the loader."""
        return {"path": str(path or self.path or "?"), "reason": self.reason, "detail": self.detail}


class BadSampleLog:
    """Applies ``dataset.on_bad_sample`` to every bad sample of one process.

    ``record()`` raises :class:`DataError` under ``error``; under ``skip`` it counts the sample
    and appends it to ``file_name`` (``bad_samples.jsonl``) in ``results_dir`` (or, without a results_dir, logs
    it as a warning so nothing is lost silently). ``report()`` logs the counts since the last
    report (called by loaders at the end of each epoch).
    """

    def __init__(self, policy: Literal["skip", "error"] = "skip", results_dir: str | Path | None = None,
                 rank: int = 0, file_name: str = FILE_NAME, phase: str | None = None):
        if policy not in ("skip", "error"):
            raise ValueError(f"on_bad_sample must be 'skip' or 'error', not {policy!r}")
        self.policy, self.rank, self.phase, self.epoch = policy, rank, phase, None
        self.path = Path(results_dir) / file_name if results_dir is not None else None
        self.totals: collections.Counter[str] = collections.Counter()
        self._unreported: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_request(cls, request: Any) -> "BadSampleLog":
        """The request's log, or a new one from ``dataset.on_bad_sample`` and its results_dir."""
        if request.bad_samples is not None:
            return request.bad_samples
        return cls(request.config.dataset.on_bad_sample, request.results_dir, request.rank)

    @contextlib.contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        """Record under ``phase`` (``val`` while training validates) for the duration of a block."""
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    def record(self, path: str, reason: str, detail: str = "") -> None:
        if self.policy == "error":
            raise DataError(
                f"bad sample: {REASONS.get(reason, reason)} ({reason}{': ' + detail if detail else ''})",
                where=str(path),
                fix="repair or remove it, or set dataset.on_bad_sample = \"skip\" to skip bad samples "
                    f"(each is then listed in {FILE_NAME})")
        self.totals[reason] += 1
        self._unreported[reason] += 1
        entry = {"path": str(path), "reason": reason, "detail": detail, "rank": self.rank, "phase": self.phase,
                 "epoch": self.epoch}
        if self.path is None:
            log.warning("skipped bad sample %s (%s%s)", path, reason, f": {detail}" if detail else "")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def record_shared(self, path: str, reason: str, detail: str = "") -> None:
        """Record a problem every rank finds alike (while indexing the data): rank 0 writes it,
        every rank stops under ``error``."""
        if self.rank == 0 or self.policy == "error":
            self.record(path, reason, detail)

    def record_all(self, records: list[dict[str, str]]) -> None:
        """Record the bad samples a worker process met (see :meth:`BadSample.record`)."""
        for r in records:
            self.record(r["path"], r["reason"], r.get("detail", ""))

    def report(self, label: str) -> dict[str, int]:
        """Log and return the counts per reason since the last report (nothing when none)."""
        counts, self._unreported = dict(self._unreported), collections.Counter()
        if counts:
            where = f"; listed in {self.path}" if self.path is not None else ""
            listing = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
            log.warning("%s: skipped %d bad samples (%s)%s", label, sum(counts.values()), listing, where)
        return counts
