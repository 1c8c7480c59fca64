"""The peer benchmark's own bookkeeping (the timing itself is not tested): vocabularies, GroundingDINO's
token chunks, the table."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_peers", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_vocabularies_have_distinct_names(bench):
    for count in (80, 1203):
        names = bench.vocabulary(count)
        assert len(names) == len(set(names)) == count


def test_gdino_chunks_hold_every_name_within_the_token_limit(bench):
    names = bench.vocabulary(1203)
    chunks = bench._gdino_chunks(names, 256)
    assert len(chunks) > 1
    for ids in chunks:
        assert ids.shape[0] == 1 and ids.shape[1] <= 256
        assert ids[0, 0] == 101 and ids[0, -1] == 102
    # one "." (1012) closes each name; the name's words are random ids >= 2000
    assert sum(int((ids == 1012).sum()) for ids in chunks) == len(names)
    assert sum(ids.shape[1] - 2 for ids in chunks) == sum(len(n.split()) + 1 for n in names)


def test_table_gives_medians_and_ratios_to_the_first_row(bench):
    rows = [bench.Row("ours", 80, "cached", lambda: None, 1.0, times=[1.0, 3.0, 2.0], gflops=100.0, peak_mb=500.0),
            bench.Row("peer", 80, "cached", lambda: None, 1.0, times=[4.0, 4.0, 5.0], gflops=50.0, peak_mb=700.0)]
    text = bench.table(rows, 2, peak_gflops=100.0)
    assert "| ours | 80 | cached | 2.00 | 1.00x | 100 | 50 % | 500 |" in text
    assert "| peer | 80 | cached | 4.00 | 2.00x | 50 | 12 % | 700 |" in text


def test_peak_rss_is_read_on_linux(bench):
    value = bench.rss_mb("VmHWM")
    assert math.isnan(value) or value > 10
