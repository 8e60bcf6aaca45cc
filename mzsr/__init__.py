"""MZSR: Meta-Transfer Learning for Zero-Shot Super-Resolution (Soh et al., CVPR 2020)."""

__version__ = "0.1.0"


class MZSRError(Exception):
    """An error the user can act on; the CLI prints its message as one line, without a traceback."""


def error_line(exc: BaseException) -> str:
    """How the `mzsr` command and the pipeline's scripts show an MZSRError: one line, no traceback."""
    return "mzsr: error: " + " ".join(str(exc).split())
