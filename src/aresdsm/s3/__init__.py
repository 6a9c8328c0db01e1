"""An S3-compatible gateway over the large-object layer (docs/s3.md; docs/protocol.md §9).

Buckets are groups; objects are fragmented files (:mod:`aresdsm.files`) published by one
coverable write of a small head register each, so every object is atomic and conditional
writes are compare-and-swap. This package sits above the client and the file layer and is never
imported by them (``protocol/`` and ``files/`` know nothing of HTTP). It needs the ``s3`` extra
(aiohttp).
"""

from __future__ import annotations

from .errors import S3Error
from .objects import Conditions, Gateway, Head
from .sigv4 import AccessKey, KeyRing, new_key

__all__ = ["AccessKey", "Conditions", "Gateway", "Head", "KeyRing", "S3Error", "new_key"]
