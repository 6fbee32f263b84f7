"""The long-poll notifier: coroutines wait on keys, threads notify them."""

from __future__ import annotations

import asyncio
import threading

from rhaas.notify import ACTIONS, Notifier, work_key


def test_the_notifier_wakes_a_coroutine_from_a_thread() -> None:
    async def scenario() -> None:
        notifier = Notifier()
        notifier.notify("k")  # nobody listens: a no-op, and not remembered
        with notifier.listening("k") as waiter, notifier.listening("other") as bystander:
            assert notifier.waiting("k") == 1 and notifier.waiting() == 2
            assert not await waiter.wait(0.01)
            threading.Timer(0.05, notifier.notify, ["k"]).start()
            assert await waiter.wait(5)
            assert not await waiter.wait(0.01), "a notification wakes once"
            assert not await bystander.wait(0.01), "other keys are not woken"
        assert notifier.waiting() == 0

    asyncio.run(scenario())


def test_work_keys_do_not_collide_with_the_actions_key() -> None:
    assert work_key(ACTIONS) != ACTIONS and work_key("n1") != work_key("n2")
