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


SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_prints_the_load_average(script):
    """Benchmarks that refuse to lie: every script calls ``load_guard()`` (load average
    at the start, and at the end) in its ``main``."""
    tree = ast.parse((BENCHMARKS / script).read_text())
    (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    called = {getattr(n.func, "id", None) for n in ast.walk(main) if isinstance(n, ast.Call)}
    assert "load_guard" in called, f"{script}: main() does not call load_guard()"


def test_ratios_on_a_busy_machine_are_marked(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_common", BENCHMARKS / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    assert common.load_limit(2) == 1.0 and common.load_limit(16) == 8.0
    assert common.comparable([0.4, 1.0], 1.0)
    assert not common.comparable([0.4, 1.01], 1.0)
    assert not common.comparable([float("nan")], 1.0)
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    loads = iter([0.5, 0.7, 1.5, 3.0, 0.2])
    monkeypatch.setattr(common, "load_average", lambda: next(loads))
    monkeypatch.setattr(common.atexit, "register", lambda fn: None)
    common.load_guard()  # 0.5 at start
    assert "load average at start: 0.50" in capsys.readouterr().out
    result = common.Paired(1.0, [1.0], 1.0, 1.0)
    assert "not comparable" not in result.line("a / b")  # 0.5, 0.7
    assert "not comparable: load average above 1.0" in result.line("a / b")  # 0.5, 1.5
    common.load_guard()  # a busy start marks everything after
    capsys.readouterr()
    assert common.load_note()  # 3.0 at start, 0.2 now
    monkeypatch.setattr(common, "load_average", lambda: 1.2)
    common._print_load_at_end()
    assert "no ratio printed above is comparable" in capsys.readouterr().out
