"""The dataset cache: a second load reads the file, other arguments another file, a corrupt
file is regenerated, nothing is unpickled."""

from __future__ import annotations

import numpy as np
import pytest

from wash_sweeps import cache
from wash_sweeps.cache import CACHE_ENV, cache_dir, cache_key, cache_path, cached_arrays

KEYS = ("x", "y")


class Maker:
    """Counts its calls, so a test can tell a cache hit from a regeneration."""

    def __init__(self, seed: int = 0):
        self.calls, self.seed = 0, seed

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        rng = np.random.default_rng(self.seed)
        return {"x": rng.normal(size=(7, 1, 5)), "y": rng.integers(0, 10, 7)}


@pytest.fixture
def cache_in(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "wash-sweeps"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "wash-sweeps"


def test_second_load_is_from_the_cache_and_equal(cache_in):
    make = Maker()
    first = cached_arrays("toy", {"n": 7}, KEYS, make)
    second = cached_arrays("toy", {"n": 7}, KEYS, make)
    assert make.calls == 1
    assert cache_path("toy", {"n": 7}).parent == cache_in
    for k in KEYS:
        assert np.array_equal(first[k], second[k]) and first[k].dtype == second[k].dtype
    assert not list(cache_in.glob("*.tmp"))  # the temporary file was renamed, not left behind


def test_key_changes_with_the_arguments(cache_in):
    assert cache_key("toy", {"n": 7, "seed": 1}) == cache_key("toy", {"seed": 1, "n": 7})
    assert cache_key("toy", {"n": 7}) != cache_key("toy", {"n": 8})
    assert cache_key("toy", {"n": 7}) != cache_key("other", {"n": 7})
    a, b = Maker(0), Maker(1)
    cached_arrays("toy", {"seed": 0}, KEYS, a)
    got = cached_arrays("toy", {"seed": 1}, KEYS, b)
    assert (a.calls, b.calls) == (1, 1)
    assert np.array_equal(got["x"], Maker(1)()["x"])


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(b"not an npz at all"),
        lambda p: p.write_bytes(b""),
        # a pickle where arrays belong: np.load must refuse it, never run it
        lambda p: p.write_bytes(b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00N."),
        lambda p: np.savez(p, x=np.zeros(3)),  # readable, but not the expected keys
        lambda p: np.savez(p, x=np.zeros(3), y=np.array([{"a": 1}], dtype=object)),
    ],
)
def test_a_corrupt_file_is_regenerated(cache_in, damage):
    make = Maker()
    want = cached_arrays("toy", {"n": 7}, KEYS, make)
    path = cache_path("toy", {"n": 7})
    damage(path)
    got = cached_arrays("toy", {"n": 7}, KEYS, make)
    assert make.calls == 2
    assert np.array_equal(got["x"], want["x"])
    again = cached_arrays("toy", {"n": 7}, KEYS, make)  # and the file was replaced
    assert make.calls == 2 and np.array_equal(again["y"], want["y"])


def test_an_unwritable_cache_still_returns_the_arrays(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would be")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    make = Maker()
    with pytest.warns(UserWarning, match="not written"):
        got = cached_arrays("toy", {"n": 7}, KEYS, make)
    assert make.calls == 1 and set(got) == set(KEYS)


@pytest.mark.slow
def test_mnist1d_is_cached(cache_in, monkeypatch):
    from wash_sweeps import data

    first = data._mnist1d()
    assert len(list(cache_in.glob("mnist1d-*.npz"))) == 1

    def boom():
        raise AssertionError("regenerated")

    monkeypatch.setattr("mnist1d.data.make_dataset", lambda *a, **k: boom())
    second = data._mnist1d()
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)
    assert first[0].shape == (4000, 1, 40) and first[2].shape == (1000, 1, 40)
    assert "seed" in data.mnist1d_args() and "mnist1d" in data.mnist1d_args()
    assert cache.cache_path("mnist1d", data.mnist1d_args()).exists()
