"""The process's per-object memos: one delete forgets an object in all of them."""

from __future__ import annotations

import threading

from modelsmith.memo import MEMORY, Memory


def test_changed_says_whether_the_value_is_new_and_remembers_it() -> None:
    memo = Memory().memo("seen", str)
    assert memo.changed("uid-1", "Running")
    assert not memo.changed("uid-1", "Running")
    assert memo.changed("uid-1", "Succeeded")
    assert memo.get("uid-1") == "Succeeded"
    assert memo.changed("uid-2", "Running"), "another object is another entry"


def test_a_falsy_value_is_remembered_too() -> None:
    """A Deployment seen unavailable (False) must not count as never seen."""
    memo = Memory().memo("ready", bool)
    assert memo.changed("uid-1", False)
    assert not memo.changed("uid-1", False)


def test_forget_clears_an_object_from_every_memo_and_only_that_object() -> None:
    memory = Memory()
    applied, job = memory.memo("applied", str), memory.memo("job", tuple)
    applied.put("uid-1", "digest")
    job.put("uid-1", (True, 0))
    applied.put("uid-2", "other")
    memory.forget("uid-1")
    assert "uid-1" not in applied and "uid-1" not in job
    assert applied.get("uid-2") == "other"
    assert memory.sizes() == {"applied": 1, "job": 0}


def test_one_thread_wins_a_change_seen_by_many() -> None:
    """kopf's handler threads, the clock and later's timers share the memos: of many
    threads that see the same change at once, exactly one acts on it."""
    memo = Memory().memo("race", int)
    winners: list[bool] = []
    barrier = threading.Barrier(8)

    def see() -> None:
        barrier.wait()
        winners.append(memo.changed("uid-1", 1))

    threads = [threading.Thread(target=see) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert winners.count(True) == 1


def test_the_handlers_memos_all_belong_to_the_process_memory() -> None:
    import modelsmith.handlers.batch
    import modelsmith.handlers.inference  # noqa: F401

    assert {"applied", "finished", "job", "stuck", "deployment-ready"} <= set(MEMORY.sizes())
