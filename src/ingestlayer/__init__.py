"""ingestlayer: a self-hostable event pipeline and webhook delivery platform.

The public Python surface is small on purpose: the SDK client and webhook verification
live in :mod:`ingestlayer.sdk`; everything else is the server.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
