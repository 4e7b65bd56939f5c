"""RadDraft: shared settings, database, job table, logging and the raddraft command."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raddraft")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
