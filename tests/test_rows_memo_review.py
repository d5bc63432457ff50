"""Review of the rows memo (``skclip.encoding.cache.ROWS``): ways to make a list looked
up again answer other rows than the files' current contents."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from test_cache_trust import uncached
from test_rows_memo import files, lookups  # noqa: F401 (fixture: per-file lookups counted)

from skclip import CLIPFeaturizer
from skclip.encoding.cache import FILE_DIGESTS, ROWS

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux only")


@linux
def test_a_chdir_during_the_lookup_keeps_no_rows(tiny_clip_path, tmp_path, monkeypatch, lookups):
    # The rows are keyed by the working directory read before the files are looked up;
    # another thread's chdir in between must not file the rows of b/ under a/.
    for name, seed in (("a", 0), ("b", 50)):
        (tmp_path / name).mkdir()
        files(tmp_path / name, 2, seed)
    names = ["0.bmp", "1.bmp"]
    feat = CLIPFeaturizer(model=tiny_clip_path)
    for name in ("b", "a"):  # both folders' digests and embeddings known
        monkeypatch.chdir(tmp_path / name)
        feat.transform(names)
    ROWS.clear()
    looked_up = FILE_DIGESTS.known_leased  # the counting one of the fixture

    def chdir_meanwhile(paths):
        os.chdir(tmp_path / "b")  # what another thread may do at this moment
        return looked_up(paths)

    monkeypatch.setattr(FILE_DIGESTS, "known_leased", chdir_meanwhile)
    monkeypatch.chdir(tmp_path / "a")
    feat.transform(names)  # looked up in b/, while the key says a/
    monkeypatch.setattr(FILE_DIGESTS, "known_leased", looked_up)
    monkeypatch.chdir(tmp_path / "a")
    np.testing.assert_allclose(feat.transform(names), uncached(tiny_clip_path, names), atol=1e-6)
