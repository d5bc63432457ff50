"""The ``skclip`` command line (``skclip fit | predict | evaluate``)."""

from .commands import main

__all__ = ["main"]
