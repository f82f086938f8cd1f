"""A session whose torrents all belong to Background Datasets runs libtorrent's threads at nice 19."""

from __future__ import annotations

import os
import threading

import pytest

from cairn.node_agent.host.priority import unnamed_native_threads
from cairn.node_agent.p2p.session import TorrentNode


def niceness(thread: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread)


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a thread's priority back needs CAP_SYS_NICE")
def test_libtorrents_threads_yield_and_are_raised_again_while_python_threads_keep_theirs() -> None:
    mine = niceness(threading.get_native_id())  # other tests may have lowered this thread already
    with TorrentNode("127.0.0.1") as node:
        threads = unnamed_native_threads()
        assert threads, "libtorrent started no thread of its own"
        assert threading.get_native_id() not in threads and os.getpid() not in threads
        node.yield_cpu(True)
        assert {niceness(t) for t in unnamed_native_threads()} == {19}
        assert niceness(threading.get_native_id()) == mine, "the agent's own threads keep their priority"
        node.yield_cpu(False)
        assert {niceness(t) for t in unnamed_native_threads()} == {0}
