"""wardgate: segregation of duties for AI agents, at the protocol level."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wardgate")  # one source: pyproject.toml's [project] version
except PackageNotFoundError:  # pragma: no cover - run from a source tree never installed
    __version__ = "0+unknown"
