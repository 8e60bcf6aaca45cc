"""MZSR: Meta-Transfer Learning for Zero-Shot Super-Resolution (Soh et al., CVPR 2020)."""

__version__ = "0.2.0"


class MZSRError(Exception):
    """An error the user can act on; the CLI prints its message as one line, without a traceback."""


class MZSRFileError(MZSRError, OSError):
    """A file-system fault (no space left, read-only, permission denied, ...) on a named path."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MZSRWarning(UserWarning):
    """Something the user should know (a setting converted, a file set aside); shown as one line."""


def error_line(exc: BaseException) -> str:
    """How the `mzsr` command and the pipeline's scripts show an MZSRError: one line, no traceback."""
    return "mzsr: error: " + " ".join(str(exc).split())
