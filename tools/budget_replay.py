"""Replay greedy traces the way a live client would under load: each round's draft is cut to
the budget the daemon's last VERDICT asked for.

A plain replay sends the recorded drafts as they are, so the daemon's budget changes nothing
and a benchmark could not tell whether the budget keeps a busy server's capacity. Cutting a
draft moves the session off the recorded rounds, but not off the recorded *drafts*: a greedy
draft is a function of its context, and the context is always the target's own tokens. So the
draft from position ``L`` is the recorded draft whose root is at or before ``L`` and whose
nodes spell the target's tokens down to ``L``: the rest of a chain, or the subtree under that
node of a tree. Greedy verification keeps every answer checkable, since the accepted path is
the longest path of draft nodes that spells the target's tokens, and the next token is the
target's.

A tree whose budget is below its size is sent as the client sends it then
(``edge_client/tree_shape.py``): a chain of ``min(k, budget)``, the tree's main branch (each
node's first child: the chain the draft would have made), ``k`` being the chain length the
client recorded beside the tree (``chain_k``).

Both chains and trees lose by the cut alike (a subtree under a deep node is smaller than a
fresh tree would be, the rest of a chain shorter than a fresh one), so the comparison of
the two under one budget leans, if anything, against trees.
"""

from __future__ import annotations

import numpy as np
from edgespec.edge_client.trace import TraceError, accepted_tokens
from edgespec.edge_client.transport import Link
from edgespec.tools.replay import Record, Replayer
from edgespec.wire.codec import Draft
from edgespec.wire.errors import WireError

Node = tuple[int, int]  # (token, parent index; -1: the root)


def target_tokens(records: list[Record]) -> list[int]:
    """The whole recorded sequence: the prompt, then every round's accepted tokens and the
    target's next token."""
    tokens = list(records[0]["tokens"])
    for record in records[1:]:
        if record["base_length"] != len(tokens):
            raise TraceError(f"round at {record['base_length']} after {len(tokens)} tokens")
        tokens += [*accepted_tokens(record), record["next_token"]]
    return tokens


def _nodes(record: Record) -> list[Node]:
    parents = record.get("parents")
    draft = [int(t) for t in record["draft"]]
    if parents is None:
        return [(token, i - 1) for i, token in enumerate(draft)]
    return list(zip(draft, (int(p) for p in parents), strict=True))


def subtree_at(nodes: list[Node], spelled: list[int]) -> list[Node] | None:
    """The draft from ``len(spelled)`` nodes below the root: walk down the nodes that spell
    ``spelled`` and return what hangs below, re-rooted and in the recorded (topological)
    order; None when the nodes do not spell it."""
    at = -1
    for token in spelled:
        at = next((i for i, (t, p) in enumerate(nodes) if p == at and t == token), -2)
        if at == -2:
            return None
    index = {at: -1}
    below: list[Node] = []
    for i, (token, parent) in enumerate(nodes):
        if parent in index and i != at:
            index[i] = len(below)
            below.append((token, index[parent]))
    return below


def cut(nodes: list[Node], budget: int, max_depth: int) -> list[Node]:
    """The first ``budget`` nodes (topological order keeps every kept node's parent) no
    deeper than ``max_depth``."""
    depth: dict[int, int] = {-1: 0}
    kept: list[Node] = []
    remap: dict[int, int] = {-1: -1}
    for i, (token, parent) in enumerate(nodes):
        if parent not in remap or len(kept) >= budget:
            continue
        d = depth[parent] + 1
        if d > max_depth:
            continue
        depth[i], remap[i] = d, len(kept)
        kept.append((token, remap[parent]))
    return kept


def main_branch(nodes: list[Node]) -> list[Node]:
    """The chain of first children from the root."""
    first: dict[int, int] = {}
    for i, (_token, parent) in enumerate(nodes):
        first.setdefault(parent, i)
    chain: list[Node] = []
    at = first.get(-1)
    while at is not None:
        chain.append((nodes[at][0], len(chain) - 1))
        at = first.get(at)
    return chain


def draft_for(record: Record, spelled: list[int], budget: int) -> list[Node]:
    """What a client drafts ``len(spelled)`` tokens below ``record``'s root under ``budget``
    (0: none): the recorded draft there, cut as above; [] where it does not reach."""
    nodes = _nodes(record)
    below = subtree_at(nodes, spelled) or []
    if "parents" in record and 0 < budget < len(nodes):
        chain_k = int(record.get("chain_k") or -(-len(nodes) // 4))
        return main_branch(below)[:min(chain_k, budget)]
    return cut(below, budget or len(below), len(below))


def greedy_outcome(nodes: list[Node], target: list[int], at: int) -> tuple[int, int]:
    """(accepted, next_token) the daemon must answer for ``nodes`` drafted at ``at``."""
    node, accepted = -1, 0
    while True:
        want = target[at + accepted]
        child = next((i for i, (t, p) in enumerate(nodes) if p == node and t == want), None)
        if child is None:
            return accepted, want
        node, accepted = child, accepted + 1


class BudgetReplayer(Replayer):
    """One greedy session, each draft cut to the daemon's budget (the recorded draft that
    covers the session's position, as above). Paced by the verdicts (``--pace fast``)."""

    history: list[int]

    def play(self, link: Link, start: float) -> None:
        try:
            if any(r["kind"] == "open" and r.get("sampling") for r in self.records):
                raise TraceError("a budget replay needs greedy traces (sampled draws depend "
                                 "on the draft that was sent)")
            self.open(link, self.records[0])
            self._rounds(link, target_tokens(self.records),
                         [r for r in self.records[1:] if r["kind"] == "round"])
        except (WireError, TraceError) as exc:
            self.tally.errors[type(exc).__name__] += 1

    def _rounds(self, link: Link, target: list[int], rounds: list[Record]) -> None:
        budget, r = 0, 0
        while len(self.history) < len(target):
            at = len(self.history)
            while r + 1 < len(rounds) and rounds[r + 1]["base_length"] <= at:
                r += 1
            base = rounds[r]["base_length"] if rounds else at
            covering = draft_for(rounds[r], target[base:at], budget) \
                if rounds and base <= at else []
            nodes = cut(covering, len(covering),
                        len(target) - 1 - at)  # the answer must stay inside the recording
            chain = all(p == i - 1 for i, (_, p) in enumerate(nodes))
            draft = Draft(at, [t for t, _ in nodes], None,
                          None if chain else np.asarray([p for _, p in nodes], dtype=np.int32))
            verdict = self.verify(link, draft)
            if (verdict.accepted, verdict.next_token) != greedy_outcome(nodes, target, at):
                self.tally.diverged_rounds += 1
                self.tally.diverged_sessions += 1
                return
            self.history = target[:at + verdict.accepted + 1]
            budget = verdict.budget
