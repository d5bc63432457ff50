"""Claims between processes that share a disk cache: who encodes which image.

Before a forward pass, a process *claims* each image it is about to encode (an
exclusive claim file of the :class:`~skclip.encoding.cache.DiskStore`); images another
live process claims are left to it and awaited (:func:`wait_for`), so that processes
encoding the same images (a search's workers, a cluster's) encode each one once. A
claim is dropped when the entry is stored or given up (:func:`release`); a void claim
(its process gone) is taken over. The format of the claim files and the rules for
void claims belong to the store (:func:`skclip.encoding.cache.claim_holder`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

#: Seconds of waiting on other processes before a line says so, and between two lines.
WAIT_NOTE_AFTER = 2.0
WAIT_NOTE_EVERY = 30.0


def claim(
    cache: Any, kept: list[int], keys: list[str | None], claims: set[str]
) -> tuple[list[int], list[tuple[int, np.ndarray]], list[tuple[int, str]]]:
    """Before a forward pass of the images at input positions ``kept`` (cache keys
    ``keys``): the indices into ``kept`` this process claims (adding their keys to
    ``claims``), the (position, embedding) of cache hits that appeared since the lookup
    (another process stored them), and the (position, key) of images another live
    process is encoding now (wait for them: :func:`wait_for`)."""
    mine, hits, others = [], [], []
    for j, (i, key) in enumerate(zip(kept, keys)):
        if key is None:
            mine.append(j)
            continue
        vec = cache.get(key)
        if vec is not None:
            hits.append((i, vec))
        elif cache.claim(key):
            claims.add(key)
            mine.append(j)
        else:
            others.append((i, key))
    return mine, hits, others


def release(cache: Any, keys: list[str | None], claims: set[str]) -> None:
    """Drop this process's claims on ``keys`` (stored, or given up)."""
    for key in keys:
        if key in claims:
            claims.discard(key)
            cache.release(key)


def wait_for(
    cache: Any,
    waiting: list[tuple[int, str]],
    progress: bool | str = "auto",
    poll: float = 0.02,
) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
    """Wait for entries other processes are encoding: (position, embedding) of those
    stored, and the positions whose claim became void without an entry (to encode
    here). Ends when no live process claims any of them. After ``WAIT_NOTE_AFTER``
    seconds, a line on stderr says what is awaited (unless ``progress=False``)."""
    hits, again = [], []
    start = time.monotonic()
    next_note = start + WAIT_NOTE_AFTER
    while waiting:
        still, holders = [], set()
        for i, key in waiting:
            vec = cache.get(key)
            holder = None if vec is not None else cache.holder(key)
            if vec is not None:
                hits.append((i, vec))
            elif holder is not None:
                still.append((i, key))
                holders.add(holder)
            else:
                again.append(i)
        waiting = still
        if waiting:
            now = time.monotonic()
            if now >= next_note and progress is not False:
                next_note = now + WAIT_NOTE_EVERY
                _note_waiting(cache, now - start, len(waiting), holders)
            time.sleep(poll)
    return hits, sorted(again)


def _note_waiting(cache: Any, waited: float, n: int, holders: set[str]) -> None:
    where = cache.disk.root if cache.disk is not None else None
    tqdm.write(
        f"skclip: waiting {waited:.0f} s for {n} image(s) that "
        f"{', '.join(sorted(holders))} is encoding (cache folder {where})",
        file=sys.stderr,
    )
