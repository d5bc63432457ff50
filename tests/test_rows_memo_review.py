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
@pytest.mark.parametrize("back", [False, True], ids=["to b", "to b and back"])
def test_a_chdir_during_the_lookup_keeps_no_rows_of_another_folder(
    tiny_clip_path, tmp_path, monkeypatch, lookups, back
):
    # The rows are keyed by the working directory read before the files are looked up;
    # another thread's chdir in between (and back) must not file the rows of b/ under a/:
    # relative paths are looked up in the key's folder.
    for name, seed in (("a", 0), ("b", 50)):
        (tmp_path / name).mkdir()
        files(tmp_path / name, 2, seed)
    names = ["0.bmp", "1.bmp"]
    feat = CLIPFeaturizer(model=tiny_clip_path)
    for name in ("b", "a"):  # both folders' digests and embeddings known
        monkeypatch.chdir(tmp_path / name)
        feat.transform(names)
    expected = uncached(tiny_clip_path, names)  # a/'s images
    ROWS.clear()
    looked_up = FILE_DIGESTS.known_leased  # the counting one of the fixture

    def chdir_meanwhile(paths, cwd=None):
        os.chdir(tmp_path / "b")  # what another thread may do at this moment
        try:
            return looked_up(paths, cwd)
        finally:
            if back:
                os.chdir(tmp_path / "a")

    monkeypatch.setattr(FILE_DIGESTS, "known_leased", chdir_meanwhile)
    monkeypatch.chdir(tmp_path / "a")
    np.testing.assert_allclose(feat.transform(names), expected, atol=1e-6)  # a/'s, the key's
    monkeypatch.setattr(FILE_DIGESTS, "known_leased", looked_up)
    monkeypatch.chdir(tmp_path / "a")
    calls = lookups["calls"]
    np.testing.assert_allclose(feat.transform(names), expected, atol=1e-6)
    assert lookups["calls"] == calls  # served from the rows kept for a/
