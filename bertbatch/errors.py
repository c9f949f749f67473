"""Exceptions the library raises. The CLI turns each into a one-line message and the class's exit code.

Exit codes (README, "Exit codes"): 0 success, 1 input or options, 2 command-line usage (click), 3 model,
4 output (cannot write, not bertbatch's, a link, in use by another job), 5 missing optional package,
70 a bug (an unexpected exception), 130 interrupted, 141 stdout closed by its reader.
"""

import os

EXIT_INPUT, EXIT_USAGE, EXIT_MODEL, EXIT_OUTPUT, EXIT_DEPENDENCY = 1, 2, 3, 4, 5
EXIT_BUG, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 70, 130, 141


class BertbatchError(Exception):
    """Base class: the message says what was expected, what was found, and what to do."""

    exit_code = EXIT_INPUT


class InputError(BertbatchError):
    """Bad user data or options: a missing column, an unreadable row, an empty table, a refused resume."""


class ModelError(BertbatchError):
    """A model directory or graph that cannot be used as asked."""

    exit_code = EXIT_MODEL


class OutputError(BertbatchError):
    """The output cannot be written: OS failure, a directory bertbatch does not own, a link, a busy job."""

    exit_code = EXIT_OUTPUT


class ValidationFailed(BertbatchError):
    """An exported graph failed its parity/accuracy gate; carries the figures."""

    exit_code = EXIT_MODEL

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


class MissingDependency(BertbatchError):
    """An optional package is not installed; names the pip extra that brings it."""

    exit_code = EXIT_DEPENDENCY

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package} is not installed; it comes with the '{extra}' extra: pip install 'bertbatch[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, package: str | None = None):
    """Import an optional module or raise MissingDependency naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(package or module, extra) from exc


# What to do about the OS errors a user can fix, by errno name.
_OS_HINTS = {
    "ENOSPC": "free some space or write elsewhere with -o",
    "EDQUOT": "free some space or write elsewhere with -o",
    "EFBIG": "the file size limit (ulimit -f) was reached; raise it or write elsewhere with -o",
    "EROFS": "choose a writable location with -o",
    "EACCES": "check the permissions, or choose another path",
    "EPERM": "check the permissions, or choose another path",
    "ENOTDIR": "a file stands where a directory is needed; choose another path",
    "EISDIR": "a directory stands where a file is needed; choose another path",
    "ELOOP": "bertbatch never follows a link in its output; remove the link",
    "EEXIST": "remove it or choose another path",
    "ENOENT": "check the path",
}


def describe_os_error(exc: OSError, doing: str = "") -> str:
    """One line from an OSError (Python's or pyarrow's): what failed, on which path, and what to do."""
    import errno as errno_codes
    import re

    code = exc.errno
    if code is None:  # pyarrow puts "[errno 28] No space left on device" in the text
        found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else (exc.strerror or str(exc).splitlines()[0])
    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    hint = _OS_HINTS.get(errno_codes.errorcode.get(code, ""), "")
    what = f"{doing}{where}: " if doing or where else ""
    return f"{what}{reason}" + (f"; {hint}." if hint else ".")
