"""``dip restore --workers N``: the cores of a finished worker go to the fits still running."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from dip_lightning.callbacks.threads import ThreadShare, share_threads, shared_threads
from dip_lightning.restore_parallel import share_idle_cores


def worker(index: int, threads: int, busy: bool, stopping: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        index=index,
        busy=["job"] if busy else [],
        stopping=stopping,
        process=SimpleNamespace(is_alive=lambda: True),
        threads=multiprocessing.get_context("spawn").RawValue("i", threads),
    )


def counts(workers: list[SimpleNamespace]) -> list[int]:
    return [int(w.threads.value) for w in workers]


def test_each_worker_keeps_its_threads_while_inputs_are_left() -> None:
    setups = [{"threads": 2}] * 3
    workers = [worker(0, 2, True), worker(1, 2, False), worker(2, 2, True)]
    share_idle_cores(workers, setups, pending=True)
    assert counts(workers) == [2, 2, 2]


def test_the_idle_workers_threads_go_to_the_busy_ones_when_none_are_left() -> None:
    setups = [{"threads": 2}] * 3
    workers = [worker(0, 2, True), worker(1, 2, False, stopping=True), worker(2, 2, True)]
    share_idle_cores(workers, setups, pending=False)
    assert counts(workers) == [3, 2, 3]  # 6 threads over 2 busy workers
    workers[0].busy = []  # the first one finishes too: the last takes all six
    share_idle_cores(workers, setups, pending=False)
    assert counts(workers) == [2, 2, 6]


def test_a_finished_worker_that_has_exited_leaves_its_threads_to_the_busy_ones() -> None:
    """The parent drops an exited worker from its pool; its cores stay with the last fit."""
    setups = [{"threads": 1}] * 2
    workers = [worker(0, 1, True), worker(1, 1, False, stopping=True)]
    share_idle_cores(workers, setups, pending=False)
    assert counts(workers) == [2, 1]
    del workers[1]  # worker 1 got its stop and exited
    share_idle_cores(workers, setups, pending=False)
    assert counts(workers) == [2]


def test_an_uneven_split_gives_the_remainder_to_the_first() -> None:
    setups = [{"threads": 1}] * 3
    workers = [worker(0, 1, True), worker(1, 1, True), worker(2, 1, False, stopping=True)]
    share_idle_cores(workers, setups, pending=False)
    assert counts(workers) == [2, 1, 1]
    assert sum(counts(workers)[:2]) == 3


def test_workers_with_their_own_count_are_left_alone() -> None:
    workers = [worker(0, 1, True), worker(1, 1, False, stopping=True)]
    for w in workers:
        w.threads = None
    share_idle_cores(workers, [{"threads": 1}] * 2, pending=False)  # nothing to change
    assert all(w.threads is None for w in workers)


@pytest.fixture
def threads_back() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    share_threads(None)
    torch.set_num_threads(before)


def test_the_callback_follows_the_shared_count_at_its_interval(threads_back: None) -> None:
    value = multiprocessing.get_context("spawn").RawValue("i", 1)
    callback = ThreadShare(every_n_steps=4)
    trainer = SimpleNamespace(global_step=0)
    share_threads(value)
    torch.set_num_threads(2)
    callback.on_train_start(trainer, None)  # type: ignore[arg-type]
    assert torch.get_num_threads() == 1  # the shared count, from the start
    value.value = 2
    trainer.global_step = 5  # not a multiple of 4: not read
    callback.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    assert torch.get_num_threads() == 1
    trainer.global_step = 8
    callback.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    assert torch.get_num_threads() == 2
    value.value = 0  # not a count: ignored
    assert shared_threads() is None
    callback.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    assert torch.get_num_threads() == 2


def test_without_a_shared_count_the_callback_does_nothing(threads_back: None) -> None:
    share_threads(None)
    torch.set_num_threads(1)
    ThreadShare(every_n_steps=1).on_train_start(SimpleNamespace(global_step=0), None)  # type: ignore[arg-type]
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="every_n_steps"):
        ThreadShare(every_n_steps=0)
