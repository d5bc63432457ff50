"""Benchmarks that time encoding must not time embedding-cache hits (issue 15, item 9)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script", ["bench_featurizer.py", "bench_distributed.py", "profile_runtimes.py"]
)
def test_encoding_benchmarks_turn_the_cache_off(script):
    """Every CLIPFeaturizer these scripts time passes ``cache=False``: with the cache on,
    bench_featurizer's timed passes were cache hits (it printed a ratio of 5445)."""
    tree = ast.parse((BENCHMARKS / script).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CLIPFeaturizer"
    ]
    assert calls, f"{script} builds no CLIPFeaturizer"
    for call in calls:
        cache = {kw.arg: kw.value for kw in call.keywords}.get("cache")
        assert isinstance(cache, ast.Constant) and cache.value is False, (
            f"{script}, line {call.lineno}: CLIPFeaturizer(...) without cache=False"
        )
