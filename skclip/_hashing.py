"""The one content hash of skclip: BLAKE2b, of 16 bytes unless a key format says otherwise.

Every digest (embedding-cache keys and checksums, checkpoint fingerprints, export
keys) is made here, so that they all change together or not at all.
"""

from __future__ import annotations

import hashlib

#: Bytes of a digest: 32 hexadecimal characters.
DIGEST_SIZE = 16


def hasher(data: bytes = b"", digest_size: int = DIGEST_SIZE) -> hashlib.blake2b:
    """A BLAKE2b hash object of ``digest_size`` bytes, fed ``data``.

    Examples
    --------
    >>> hasher(b"skclip").hexdigest() == hasher(b"skclip").hexdigest()
    True
    >>> len(hasher(digest_size=12).hexdigest())
    24
    """
    return hashlib.blake2b(data, digest_size=digest_size)
