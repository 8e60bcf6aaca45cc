"""Run a rule script (scripts/*.py) in the test's process with a stand-in for the `snakemake` object
that Snakemake's script directive injects: faults can then be injected with monkeypatch."""

from __future__ import annotations

import runpy
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


class Named(list):
    """Snakemake's input/output/log objects: items by position, by attribute and by name."""

    def __init__(self, **named):
        super().__init__(named.values())
        self.__dict__.update(named)
        self._names = list(named)

    def keys(self):
        return list(self._names)

    def __getitem__(self, key):
        return self.__dict__[key] if isinstance(key, str) else super().__getitem__(key)


def run_script(
    monkeypatch,
    name: str,
    input: dict,
    output: dict,
    params: dict,
    wildcards: dict | None = None,
    config: dict | None = None,
    log: Path | None = None,
):
    log = log or Path(tempfile.mkdtemp()) / "job.log"
    stub = SimpleNamespace(
        input=Named(**input),
        output=Named(**output),
        log=Named(log=str(log)),
        params=SimpleNamespace(**params),
        wildcards=SimpleNamespace(**(wildcards or {})),
        threads=1,
        config=config or {"device": "cpu", "data": {"train": {"source": "x"}}, "compute": {"default": {"threads": 1}}},
    )
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    import warnings

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    try:
        runpy.run_path(str(REPO / "scripts" / f"{name}.py"), init_globals={"snakemake": stub})
    finally:
        if sys.stderr is not sys.__stderr__ and getattr(sys.stderr, "name", None) == str(log):
            sys.stderr.close()
