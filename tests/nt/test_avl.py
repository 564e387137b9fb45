"""The VAD tree stays an AVL tree in RAM (vbsim.nt.avl): after any sequence of insertions and
removals, the in-order walk is sorted, every node's Balance bits equal height(right) −
height(left), no node is off by more than one, and the parent links agree with the child links."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.nt.avl import AvlTree
from vbsim.nt.layouts import RTL_BALANCED_NODE

NODE = 0x40
BASE = 0x1000


class Memory:
    """A flat byte store with the loads and stores the tree code uses."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def read(self, va: int, length: int) -> bytes:
        return bytes(self.data[va : va + length])

    def write(self, va: int, data: bytes) -> None:
        self.data[va : va + len(data)] = data

    def read_u64(self, va: int) -> int:
        return int.from_bytes(self.data[va : va + 8], "little")

    def write_u64(self, va: int, value: int) -> None:
        self.data[va : va + 8] = value.to_bytes(8, "little")

    def read_u32(self, va: int) -> int:
        return int.from_bytes(self.data[va : va + 4], "little")

    def write_u32(self, va: int, value: int) -> None:
        self.data[va : va + 4] = value.to_bytes(4, "little")


#: Each node keeps its key at +0x18 (past the balanced-node header), as a VAD keeps its VPNs.
KEY = 0x18


def _insert(tree: AvlTree, mem: Memory, node: int, key: int) -> None:
    mem.write_u64(node + KEY, key)
    parent, link, right = 0, tree.root(), False
    while link:
        parent, right = link, key > mem.read_u64(link + KEY)
        link = tree.right(link) if right else tree.left(link)
    tree.link(parent, node, right, 64)


def _check(tree: AvlTree, mem: Memory, node: int, parent: int) -> tuple[int, list[int]]:
    """(height, keys in order) of the subtree at ``node``, asserting the invariants."""
    if not node:
        return 0, []
    assert tree.parent(node) == parent
    left_height, left_keys = _check(tree, mem, tree.left(node), node)
    right_height, right_keys = _check(tree, mem, tree.right(node), node)
    assert abs(right_height - left_height) <= 1
    assert tree.balance(node) == right_height - left_height
    return 1 + max(left_height, right_height), [*left_keys, mem.read_u64(node + KEY), *right_keys]


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.integers(0, 10_000), min_size=1, max_size=60, unique=True),
    removals=st.lists(st.integers(0, 59), max_size=60),
)
def test_any_sequence_keeps_an_avl_tree(keys: list[int], removals: list[int]) -> None:
    mem = Memory(BASE + NODE * (len(keys) + 1))
    tree = AvlTree(mem, 0)
    nodes = {}
    for index, key in enumerate(keys):
        node = BASE + NODE * index
        _insert(tree, mem, node, key)
        nodes[key] = node
        height, order = _check(tree, mem, tree.root(), 0)
        assert order == sorted(nodes)
    for pick in removals:
        if not nodes:
            break
        key = sorted(nodes)[pick % len(nodes)]
        tree.remove(nodes.pop(key), 64)
        height, order = _check(tree, mem, tree.root(), 0)
        assert order == sorted(nodes)
        # An AVL tree of n nodes is at most 1.44 log2(n + 2) high.
        assert height <= 1.45 * (len(nodes) + 2).bit_length() + 1


def test_ascending_insertions_give_a_balanced_tree() -> None:
    """What a plain search tree would turn into a list (addresses handed out bottom-up)."""
    mem = Memory(BASE + NODE * 64)
    tree = AvlTree(mem, 0)
    for index in range(63):
        _insert(tree, mem, BASE + NODE * index, index)
    height, _ = _check(tree, mem, tree.root(), 0)
    assert height == 6
    assert RTL_BALANCED_NODE.PARENT_FLAGS == 3
