"""The transferkit error family.

Every error a user can cause (bad data, a missing backbone, a damaged bundle or cache)
is raised as a subclass of :class:`TransferkitError` with a message that says what was
wrong and what to do, so the CLI can print it as one line instead of a traceback.
"""


class TransferkitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class DataError(TransferkitError, ValueError):
    """The images or labels given cannot be used (empty folder, one class, bad CSV...)."""


class ImageDecodeError(DataError):
    """One file could not be read as an image (corrupt, truncated, not an image)."""


class BackboneError(TransferkitError):
    """A backbone name, architecture or weights file cannot be turned into a network."""


class BundleError(TransferkitError):
    """A saved model folder is missing, incomplete or from an incompatible version."""


class CacheError(TransferkitError):
    """The feature cache is unusable (unwritable folder, mismatched entries)."""

