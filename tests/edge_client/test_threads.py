"""The client's thread split: local vs remote endpoints, the daemon's WELCOME, explicit flags."""

from __future__ import annotations

import pytest
from edgespec.edge_client.threads import ThreadSplit, is_local_endpoint
from edgespec.wire.codec import Welcome

HERE = b"h" * 16
ELSEWHERE = b"e" * 16


def welcome(host: bytes, threads: int, on_gpu: bool = False) -> Welcome:
    return Welcome(b"f" * 32, 10, 8, 64, "t", (0,), "", host, threads, on_gpu)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5557", "tcp://localhost:1",
                                      "tcp://[::1]:5557", "tcp://127.3.2.1:9", "ipc:///tmp/x"])
def test_loopback_endpoints_are_local(endpoint):
    assert is_local_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", ["tcp://10.0.0.5:5557", "tcp://gpu-box:5557",
                                      "tcp://[2001:db8::1]:5557"])
def test_other_endpoints_are_not(endpoint):
    assert not is_local_endpoint(endpoint)


def test_local_endpoint_takes_the_cores_the_daemon_left():
    split = ThreadSplit.choose(0, True, welcome(ELSEWHERE, 3), cores=8, here=HERE)
    assert (split.draft, split.daemon, split.reason) == (5, 3, "same machine")


def test_a_lan_name_for_this_machine_is_recognised_by_host_id():
    split = ThreadSplit.choose(0, False, welcome(HERE, 1), cores=2, here=HERE)
    assert (split.draft, split.reason) == (1, "same machine")


def test_remote_daemon_leaves_every_core_to_the_draft():
    split = ThreadSplit.choose(0, False, welcome(ELSEWHERE, 16), cores=4, here=HERE)
    assert (split.draft, split.reason) == (4, "remote")


def test_a_local_gpu_daemon_leaves_the_cpu_to_the_draft():
    split = ThreadSplit.choose(0, True, welcome(HERE, 8, on_gpu=True), cores=8, here=HERE)
    assert (split.draft, split.reason) == (8, "same machine, GPU")


def test_explicit_threads_win():
    split = ThreadSplit.choose(2, True, welcome(HERE, 8), cores=8, here=HERE)
    assert (split.draft, split.reason) == (2, "explicit")


def test_between_rounds_a_local_cpu_draft_takes_the_daemons_cores_too():
    split = ThreadSplit.choose(0, True, welcome(HERE, 1), cores=2, here=HERE)
    assert (split.draft, split.idle_draft) == (1, 2)
    assert "draft 2 between rounds" in split.label


@pytest.mark.parametrize(("explicit", "local", "host", "on_gpu"), [
    (2, True, HERE, False),  # --threads wins, always
    (0, False, ELSEWHERE, False),  # remote: the draft has every core already
    (0, True, HERE, True),  # a GPU daemon: likewise
])
def test_no_idle_boost_unless_sharing_the_cpu_by_default(explicit, local, host, on_gpu):
    split = ThreadSplit.choose(explicit, local, welcome(host, 8, on_gpu), cores=8, here=HERE)
    assert split.idle_draft == split.draft
    assert "between rounds" not in split.label
