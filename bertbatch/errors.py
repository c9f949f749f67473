"""Exceptions the library raises. The CLI turns each into a one-line message and a nonzero exit."""


class BertbatchError(Exception):
    """Base class: the message says what was expected, what was found, and what to do."""


class InputError(BertbatchError):
    """Bad user data: a missing column, an unreadable row, an empty table."""


class ModelError(BertbatchError):
    """A model directory or graph that cannot be used as asked."""


class ValidationFailed(BertbatchError):
    """An exported graph failed its parity/accuracy gate; carries the figures."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


class MissingDependency(BertbatchError):
    """An optional package is not installed; names the pip extra that brings it."""

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
