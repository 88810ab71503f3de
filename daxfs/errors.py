"""Domain exceptions.  Lower layers raise these; only daxfs.fuse_ops turns them into
FUSEError, and only the CLI turns ImageError into a one-line message."""

from __future__ import annotations

import errno
import os


class FsError(Exception):
    """A filesystem operation failed with an errno, as a syscall would."""

    def __init__(self, err: int, msg: str | None = None) -> None:
        super().__init__(err, msg or os.strerror(err))
        self.errno = err

    def __str__(self) -> str:
        return f"[{errno.errorcode.get(self.errno, self.errno)}] {self.args[1]}"


class ImageError(Exception):
    """The image cannot be used (missing, foreign, corrupt, in use).  One-line reason."""


class CorruptionError(ImageError):
    """A metadata block failed its checksum or a structure is inconsistent."""

    def __init__(self, msg: str, blkno: int | None = None) -> None:
        super().__init__(msg)
        self.blkno = blkno
