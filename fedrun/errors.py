"""User-facing errors: one sentence that says what to change, printed without a traceback."""


class FedrunError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The message is shown as is (``fedrun: error: <message>``), so it must be one clear
    sentence that names the setting and says what to change.
    """


class DivergenceError(FedrunError):
    """Training produced a non-finite or exploding loss or update."""


class DiskFull(FedrunError):
    """A write failed because the disk is full or the file cannot be written (read-only, no permission)."""


NO_SPACE = (28, 122)  # errno ENOSPC, EDQUOT
NOT_WRITABLE = (30, 13, 1)  # errno EROFS, EACCES, EPERM


def os_error_in(err: BaseException):
    """The ``OSError`` of a full disk or unwritable file behind ``err`` (itself, or what it was
    raised from or during: torch's serializer turns the file's ``OSError`` into a ``RuntimeError``), or None."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in NO_SPACE + NOT_WRITABLE:
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{max(n, 1) / 1e3:,.0f} KB"


def disk_error(path, err: OSError, needed=None) -> DiskFull:
    """The one sentence for a write of ``path`` that failed with ``err`` (``needed``: bytes it writes)."""
    import shutil
    from pathlib import Path

    path = Path(path)
    if err.errno in NO_SPACE:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            free = None
        size = f", which needs about {_mb(needed)}" if needed else ""
        have = "" if free is None else f"; {_mb(free)} free there" if free >= 1000 else "; nothing free there"
        return DiskFull(
            f"the disk is full (no space left while writing {path}{size}{have}): free space there or pick another "
            "hydra.run.dir, then rerun the same command (it continues from the last checkpoint)."
        )
    reason = (err.strerror or type(err).__name__).lower()
    return DiskFull(
        f"{path} cannot be written ({reason}): make its folder writable (it is on a read-only filesystem, or not yours) "
        "or pick another hydra.run.dir, then rerun the same command (it continues from the last checkpoint)."
    )


class writing:
    """``with writing(path, needed):`` turns a full disk or unwritable file met inside into
    :class:`DiskFull` naming ``path`` (or the file the error names, when ``path`` is a folder) and
    the space needed; every other error passes unchanged."""

    def __init__(self, path, needed=None):
        self.path, self.needed = path, needed

    def __enter__(self) -> "writing":
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or isinstance(err, FedrunError) or not isinstance(err, Exception):
            return False
        found = os_error_in(err)
        if found is None:
            return False
        from pathlib import Path

        path = Path(found.filename) if found.filename and Path(self.path).is_dir() else self.path
        raise disk_error(path, found, self.needed) from err
