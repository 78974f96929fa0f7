"""Stream wake-ups from the publishing thread: one entry into the event loop per burst, every stream woken."""

from __future__ import annotations

import asyncio
import threading

from meshcore.xds import _stream
from meshcore.xds._stream import Stream


def test_a_burst_of_changes_enters_the_loop_once_and_wakes_every_stream():
    loop = asyncio.new_event_loop()
    entries = []
    original = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):
        entries.append(callback)
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        streams = [Stream(loop, f"s{i}", "delta") for i in range(50)]
        publisher = threading.Thread(target=lambda: [s.changed_threadsafe() for s in streams * 2])
        publisher.start()
        publisher.join(timeout=30)
        assert len(entries) == 1  # the loop did not run meanwhile: the whole burst is one callback
        assert not any(s.change_pending for s in streams)  # nothing runs off the loop
        loop.run_until_complete(asyncio.sleep(0))
        assert all(s.change_pending and s.wake.is_set() for s in streams)
        for s in streams:
            s.change_pending = False
        # Right after a batch the waker lingers: a change then joins its next look, on the loop's timer,
        # without entering the loop from the publishing thread.
        streams[3].changed_threadsafe()
        assert len(entries) == 1 and not streams[3].change_pending
        loop.run_until_complete(asyncio.sleep(_stream.LINGER_S * 3))
        assert [s.change_pending for s in streams] == [i == 3 for i in range(50)]
        streams[3].change_pending = False
        loop.run_until_complete(asyncio.sleep(_stream.LINGER_S * 3))  # a look that finds nothing ends it
        streams[5].changed_threadsafe()  # so a later change enters the loop again
        assert len(entries) == 2
        loop.run_until_complete(asyncio.sleep(0))
        assert [s.change_pending for s in streams] == [i == 5 for i in range(50)]
    finally:
        loop.close()
    streams[0].changed_threadsafe()  # a closed loop (the server stopping) is not an error
