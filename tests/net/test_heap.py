"""interlink.net.heap: memory goes back to the system after the connection count fell markedly (or malloc
holds much free memory), at most every MIN_INTERVAL. glibc is replaced by a recorder: no real trims."""

from __future__ import annotations

import ctypes

import pytest

from interlink.net import heap


class _CFunction:
    def __init__(self, fn) -> None:
        self.fn, self.restype = fn, None

    def __call__(self):
        return self.fn()


class FakeLibc:
    """What heap.py calls of glibc, recorded; `free` is what mallinfo2 reports free."""

    def __init__(self, free: int = 0) -> None:
        self.trims = 0
        self.mallopts: list[tuple[int, int]] = []
        self.free = free
        self.mallinfo2 = _CFunction(self._mallinfo2)  # heap.py sets its restype, as on a ctypes function

    def malloc_trim(self, pad: int) -> int:
        self.trims += 1
        return 1

    def mallopt(self, parameter: int, value: int) -> int:
        self.mallopts.append((parameter, value))
        return 1

    def _mallinfo2(self):
        info = heap._MallInfo2()  # noqa: SLF001 - the structure glibc fills in
        info.fordblks = self.free
        return info


@pytest.fixture
def libc(monkeypatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_libc", fake)
    return fake


@pytest.fixture
def collections(monkeypatch) -> list[int]:
    made: list[int] = []
    monkeypatch.setattr(heap.gc, "collect", lambda: made.append(1) or 0)
    return made


def test_a_drop_from_the_peak_collects_cycles_and_trims_at_most_every_interval(libc, collections):
    trimmer = heap.HeapTrimmer()
    trimmer.observe(1000, now=0.0)
    trimmer.observe(1000 - heap.DROP + 1, now=10.0)
    assert libc.trims == 0  # not a marked drop
    trimmer.observe(1000 - heap.DROP, now=11.0)
    assert libc.trims == 1 and len(collections) == 1
    trimmer.observe(0, now=11.0 + heap.MIN_INTERVAL / 2)
    assert libc.trims == 1  # too soon after the last trim
    trimmer.observe(0, now=11.0 + heap.MIN_INTERVAL)
    assert libc.trims == 2 and trimmer.peak == 0


def test_much_free_memory_in_malloc_is_trimmed_without_a_collection(libc, collections):
    trimmer = heap.HeapTrimmer()
    libc.free = heap.FREE_ENOUGH
    trimmer.observe(10, now=0.0)
    assert libc.trims == 1 and collections == []
    libc.free = heap.FREE_ENOUGH - 1
    trimmer.observe(10, now=100.0)
    assert libc.trims == 1


def test_without_glibc_nothing_is_trimmed_or_tuned(monkeypatch, collections):
    monkeypatch.setattr(heap, "_libc", None)
    assert heap.free_in_heap() == 0
    heap.tune()
    trimmer = heap.HeapTrimmer()
    trimmer.observe(500, now=0.0)
    trimmer.observe(0, now=5.0)
    assert len(collections) == 1 and trimmer.peak == 0  # cycles are still collected


def test_free_in_heap_is_zero_when_malloc_cannot_tell(libc):
    del libc.mallinfo2  # glibc before 2.33
    assert heap.free_in_heap() == 0


def test_tune_fixes_the_mmap_threshold(libc):
    heap.tune()
    assert libc.mallopts == [(-3, heap.MMAP_THRESHOLD)]


def test_free_in_heap_reads_the_real_mallinfo2_where_there_is_one():
    """glibc >= 2.33: the real figure (mallinfo2 is ten size_t); elsewhere 0, "cannot be known"."""
    libc = heap._libc  # noqa: SLF001
    if libc is not None and hasattr(libc, "mallinfo2"):
        assert heap.free_in_heap() >= 0 and ctypes.sizeof(heap._MallInfo2) == 10 * ctypes.sizeof(ctypes.c_size_t)  # noqa: SLF001
    else:
        assert heap.free_in_heap() == 0
