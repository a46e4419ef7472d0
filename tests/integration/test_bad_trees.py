"""Malformed token-tree DRAFTs against a live daemon (the tiny pair's, in its own process):
each gets an ERROR with the code the codec or the engine maps it to, and none changes a
thing: the attacked session still takes a good tree at the right base_length with the
verdict a clean session gets, and a good client generating on the same daemon (trees on)
keeps its exact greedy tokens."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.stats import GenerationStats
from edgespec.tools.target_alone import TargetAlone
from edgespec.wire.codec import (
    Close,
    Draft,
    Error,
    Open,
    Opened,
    SparseQ,
    Verdict,
    check_path,
    decode,
    encode,
)
from edgespec.wire.errors import ErrorCode
from edgespec.wire.protocol import Limits

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time there was"
MAX_NEW = 40
DAEMON_MAX_DRAFT = 32  # verifyd's default --max-draft (the tiny daemon runs with it)


def ask(sock: zmq.Socket, frames: list[bytes], timeout_ms: int = 60_000):
    sock.send_multipart(frames)
    assert sock.poll(timeout_ms), "daemon did not answer"
    return decode(sock.recv_multipart()).msg


def i32(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def bad_trees(base: int) -> list[tuple[str, list[bytes], ErrorCode, str]]:
    """(name, frames, code, a word the message must hold) for a session at ``base``; each
    is encoded for session 0 (``with_session`` readdresses it)."""
    a, b, c = 100, 200, 300
    sid = 0

    def tree(tokens: list[int], parents: list[int], q: SparseQ | None = None) -> Draft:
        return Draft(base, i32(tokens), q, i32(parents))

    chain33 = list(range(-1, 32))  # 33 nodes, one path: depth 33 > Limits.max_tree_depth
    flat40 = [-1] * 40  # 40 root children: depth 1, more nodes than the daemon's 32
    flat65 = [-1] * 65  # more nodes than the wire allows at all (64)
    good3 = tree([a, b, c], [-1, 0, 0])

    short_parents = encode(good3, sid)
    short_parents[-1] = i32([-1, 0]).tobytes()  # 2 parents for 3 nodes
    long_parents = encode(good3, sid)
    long_parents[-1] = i32([-1, 0, 0, 1]).tobytes()  # 4 parents for 3 nodes
    ragged_parents = encode(good3, sid)
    ragged_parents[-1] = ragged_parents[-1][:-1]  # not a whole number of int32

    q_short = SparseQ(i32([1, 1]), i32([a, b]), np.ones(2, dtype=np.float32))  # 2 rows, 3 nodes
    q_long = SparseQ(i32([1, 1, 1, 1]), i32([a, b, c, a]), np.ones(4, dtype=np.float32))
    q_not_one = SparseQ(i32([1, 1, 1]), i32([a, b, c]), np.array([1.0, 0.5, 1.0], np.float32))
    q_not_own = SparseQ(i32([1, 1, 1]), i32([a, c, c]), np.ones(3, dtype=np.float32))
    return [
        ("parent after its child", encode(tree([a, b], [1, -1])), ErrorCode.MALFORMED,
         "precede"),
        ("parent after its child, deeper", encode(tree([a, b, c], [-1, 2, 0])),
         ErrorCode.MALFORMED, "precede"),
        ("self-parent (a cycle)", encode(tree([a, b], [-1, 1])), ErrorCode.MALFORMED,
         "precede"),
        ("two-node cycle", encode(tree([a, b, c], [-1, 2, 1])), ErrorCode.MALFORMED,
         "precede"),
        ("parent below -1", encode(tree([a, b], [-1, -2])), ErrorCode.MALFORMED, "root"),
        ("depth past max_tree_depth", encode(tree([a] * 33, chain33)),
         ErrorCode.LIMIT_EXCEEDED, "depth"),
        ("nodes past the daemon's max draft", encode(tree([a] * 40, flat40)),
         ErrorCode.LIMIT_EXCEEDED, "exceeds"),
        ("nodes past the wire's max draft", encode(tree([a] * 65, flat65)),
         ErrorCode.LIMIT_EXCEEDED, "exceeds"),
        ("parents frame too short", short_parents, ErrorCode.MALFORMED, "parents"),
        ("parents frame too long", long_parents, ErrorCode.MALFORMED, "parents"),
        ("parents frame ragged", ragged_parents, ErrorCode.MALFORMED, "parents"),
        ("q rows fewer than nodes", encode(tree([a, b, c], [-1, 0, 0], q_short)),
         ErrorCode.MALFORMED, "supports"),
        ("q rows more than nodes", encode(tree([a, b, c], [-1, 0, 0], q_long)),
         ErrorCode.MALFORMED, "supports"),
        ("q row not summing to one", encode(tree([a, b, c], [-1, 0, 0], q_not_one)),
         ErrorCode.BAD_DISTRIBUTION, "sums"),
        ("q row without its node's token", encode(tree([a, b, c], [-1, 0, 0], q_not_own)),
         ErrorCode.BAD_DISTRIBUTION, "support"),
        ("out-of-vocabulary node", encode(tree([a, 49152 + 7], [-1, -1])),
         ErrorCode.INVALID_TOKEN, ""),
    ]


def with_session(frames: list[bytes], sid: int, seq: int) -> list[bytes]:
    """The same body under a header for ``sid`` (the builders above encode session 0)."""
    from edgespec.wire.protocol import HEADER

    magic, version, mtype, epoch, _, _ = HEADER.unpack(frames[0])
    return [HEADER.pack(magic, version, mtype, epoch, sid, seq), *frames[1:]]


@pytest.fixture(scope="module")
def good_client(tiny_daemon, tiny_pair):
    c = EdgeClient(ClientConfig(server=tiny_daemon.endpoint, draft_path=str(tiny_pair.draft_gguf),
                                threads=1, draft_tokens=6, draft_shape="tree"))
    yield c
    c.close()


def greedy_answer(client: EdgeClient, prompt: list[int]) -> tuple[list[int], GenerationStats]:
    tokens = list(prompt)
    stats = GenerationStats()
    sid = new_session_id()
    for _ in client.generate(sid, tokens, MAX_NEW, stats):
        pass
    client.end_session(sid)
    return tokens[len(prompt):], stats


def test_bad_tree_drafts_get_typed_errors_and_change_nothing(tiny_daemon, tiny_pair,
                                                             good_client):
    assert Limits().max_tree_depth == 32
    prompt = good_client.drafter.tokenize(PROMPT)
    want = TargetAlone(tiny_pair.target_dir, 1).greedy(prompt, MAX_NEW)
    before, stats = greedy_answer(good_client, prompt)
    assert before == want
    assert stats.tree_rounds > 0  # drafted as trees (the tiny greedy draft is sure: no sides)

    # The good client generates again while the attack runs, on the same daemon.
    during: dict[str, object] = {}

    def generate_during() -> None:
        try:
            during["tokens"], during["stats"] = greedy_answer(good_client, prompt)
        except BaseException as exc:  # reported below, not lost in the thread
            during["error"] = exc

    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(tiny_daemon.endpoint)
    attacked, control = new_session_id(), new_session_id()
    seq = 0

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    good = threading.Thread(target=generate_during)
    try:
        opened = ask(sock, encode(Open(i32(prompt), MAX_NEW), attacked, next_seq()))
        assert isinstance(opened, Opened) and opened.length == len(prompt), opened
        base = opened.length
        ids = [int(t) for t in want[:3]]
        assert len(want) > 6
        good.start()
        seen = 0
        for sweep in range(3):  # the attack overlaps the good client's whole answer
            for name, frames, code, word in bad_trees(base):
                reply = ask(sock, with_session(frames, attacked, next_seq()))
                assert isinstance(reply, Error), (name, reply)
                assert reply.code == code, (name, reply.code, reply.message)
                assert word.lower() in reply.message.lower(), (name, reply.message)
                seen += 1
            if sweep >= 1 and not good.is_alive():
                break
        good.join(timeout=300)
        assert not good.is_alive(), "the good client did not finish"

        # The attacked session is where it was: a good tree at its base is verified, and
        # exactly as a clean session at the same position verifies it.
        opened = ask(sock, encode(Open(i32(prompt), MAX_NEW), control, next_seq()))
        assert isinstance(opened, Opened) and opened.length == base
        # the target's own answer on the main branch, a wrong sibling beside its first
        # token and a wrong child under it: the verdict must walk 0 -> 2 -> ...
        wrong = next(t for t in range(10, 100) if t not in want[:6])
        tokens = [ids[0], wrong, ids[1], wrong, ids[2]]
        parents = [-1, -1, 0, 0, 2]
        verdicts = []
        for sid in (attacked, control):
            reply = ask(sock, encode(Draft(base, i32(tokens), None, i32(parents)), sid,
                                     next_seq()))
            assert isinstance(reply, Verdict), reply
            verdicts.append(reply)
        v = verdicts[0]
        assert (v.accepted, v.next_token, v.path, v.new_length) == (
            verdicts[1].accepted, verdicts[1].next_token, verdicts[1].path,
            verdicts[1].new_length)
        check_path(parents, v.path)
        assert v.path == (0, 2, 4) and v.accepted == 3 and v.next_token == want[3]
        assert v.new_length == base + v.accepted + 1
        # and the next round extends the new length (the old base is now out of sync)
        reply = ask(sock, encode(Draft(base, i32([ids[0]]), None, i32([-1])), attacked,
                                 next_seq()))
        assert isinstance(reply, Error) and reply.code == ErrorCode.OUT_OF_SYNC, reply
        nxt = v.new_length
        reply = ask(sock, encode(Draft(nxt, i32([want[4], wrong]), None, i32([-1, -1])),
                                 attacked, next_seq()))
        assert isinstance(reply, Verdict) and reply.path == (0,) and reply.next_token == want[5]
        for sid in (attacked, control):
            ask(sock, encode(Close(), sid, next_seq()))
    finally:
        sock.close(0)
    assert "error" not in during, during.get("error")
    assert seen >= 2 * len(bad_trees(0))
    assert during["tokens"] == before == want  # the good client's answer did not move
