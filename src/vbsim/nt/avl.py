"""An AVL tree of _RTL_BALANCED_NODEs in guest memory: what ``RtlAvlInsertNodeEx`` and
``RtlAvlRemoveNode`` keep the VAD tree as (Windows Internals 7th ed. part 1 ch. 5 "Virtual
address descriptors": the VADs form a self-balancing AVL tree).

Each node is Left, Right, ParentValue (:class:`~vbsim.nt.layouts.RTL_BALANCED_NODE`); the low two
bits of ParentValue are the node's Balance, a signed 2-bit field (Vergilius 19041 ``Balance:2``).
The model stores height(right) − height(left) there: −1 (bits 0b11), 0 or +1.  Which sign
Windows gives a left-heavy node is not documented [model].  The tree is read and written through
the caller's processor (NT's Cpu), one field at a time, at the moment of each step: a corrupted
link is followed as it stands, and every walk is bounded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbsim.nt.layouts import RTL_BALANCED_NODE, Cpu, read_field, write_field

_FLAGS = RTL_BALANCED_NODE.PARENT_FLAGS
_LEFT, _RIGHT, _PARENT = (
    RTL_BALANCED_NODE.Left,
    RTL_BALANCED_NODE.Right,
    RTL_BALANCED_NODE.ParentValue,
)


@dataclass(frozen=True)
class AvlTree:
    """The tree whose root pointer is at ``root_at`` (an _RTL_AVL_TREE), reached through
    ``mem``."""

    mem: Cpu
    root_at: int

    # -- fields ---------------------------------------------------------------------------------
    def root(self) -> int:
        return self.mem.read_u64(self.root_at)

    def left(self, node: int) -> int:
        return read_field(self.mem, node, _LEFT)

    def right(self, node: int) -> int:
        return read_field(self.mem, node, _RIGHT)

    def parent(self, node: int) -> int:
        return read_field(self.mem, node, _PARENT) & ~_FLAGS

    def balance(self, node: int) -> int:
        bits = read_field(self.mem, node, _PARENT) & _FLAGS
        return -1 if bits == _FLAGS else bits

    def _set_parent(self, node: int, parent: int) -> None:
        flags = read_field(self.mem, node, _PARENT) & _FLAGS
        write_field(self.mem, node, _PARENT, parent | flags)

    def _set_balance(self, node: int, value: int) -> None:
        parent = read_field(self.mem, node, _PARENT) & ~_FLAGS
        write_field(self.mem, node, _PARENT, parent | (value & _FLAGS))

    def _replace(self, parent: int, old: int, new: int) -> None:
        """Point ``parent``'s link to ``old`` (the root, without a parent) at ``new``, and make
        ``parent`` the parent of ``new``."""
        if not parent:
            self.mem.write_u64(self.root_at, new)
        elif self.left(parent) == old:
            write_field(self.mem, parent, _LEFT, new)
        else:
            write_field(self.mem, parent, _RIGHT, new)
        if new:
            self._set_parent(new, parent)

    # -- rotations ------------------------------------------------------------------------------
    def _rotate_left(self, node: int) -> int:
        """``node``'s right child takes its place; returns that child."""
        pivot = self.right(node)
        inner = self.left(pivot)
        write_field(self.mem, node, _RIGHT, inner)
        if inner:
            self._set_parent(inner, node)
        self._replace(self.parent(node), node, pivot)
        write_field(self.mem, pivot, _LEFT, node)
        self._set_parent(node, pivot)
        return pivot

    def _rotate_right(self, node: int) -> int:
        pivot = self.left(node)
        inner = self.right(pivot)
        write_field(self.mem, node, _LEFT, inner)
        if inner:
            self._set_parent(inner, node)
        self._replace(self.parent(node), node, pivot)
        write_field(self.mem, pivot, _RIGHT, node)
        self._set_parent(node, pivot)
        return pivot

    def _fix(self, node: int, heavy: int) -> tuple[int, bool]:
        """Rebalance ``node``, whose balance would be ``heavy`` (±2).  Returns the subtree's new
        root and whether the subtree's height went down by the rotation (for removal)."""
        sign = 1 if heavy > 0 else -1
        child = self.right(node) if sign > 0 else self.left(node)
        child_balance = self.balance(child)
        if child_balance == -sign:  # the double rotation: the grandchild rises
            grandchild = self.left(child) if sign > 0 else self.right(child)
            g = self.balance(grandchild)
            if sign > 0:
                self._rotate_right(child)
                top = self._rotate_left(node)
            else:
                self._rotate_left(child)
                top = self._rotate_right(node)
            self._set_balance(node, -sign if g == sign else 0)
            self._set_balance(child, sign if g == -sign else 0)
            self._set_balance(top, 0)
            return top, True
        top = self._rotate_left(node) if sign > 0 else self._rotate_right(node)
        if child_balance == 0:  # only after a removal
            self._set_balance(node, sign)
            self._set_balance(top, -sign)
            return top, False
        self._set_balance(node, 0)
        self._set_balance(top, 0)
        return top, True

    # -- insertion and removal ------------------------------------------------------------------
    def link(self, parent: int, node: int, right: bool, limit: int) -> None:
        """Hang the fresh ``node`` under ``parent`` (on its right or left; no parent: as the
        root), then rebalance on the way up (at most ``limit`` steps)."""
        write_field(self.mem, node, _LEFT, 0)
        write_field(self.mem, node, _RIGHT, 0)
        write_field(self.mem, node, _PARENT, parent)
        if not parent:
            self.mem.write_u64(self.root_at, node)
            return
        write_field(self.mem, parent, _RIGHT if right else _LEFT, node)
        child = node
        for _ in range(limit):
            if not parent:
                return
            value = self.balance(parent) + (1 if self.right(parent) == child else -1)
            if value == 0:
                self._set_balance(parent, 0)
                return  # the subtree kept its height
            if value in (-1, 1):
                self._set_balance(parent, value)
                child, parent = parent, self.parent(parent)
                continue
            self._fix(parent, value)
            return  # an insertion's rotation restores the subtree's old height

    def remove(self, node: int, limit: int) -> None:
        """Unlink ``node`` (its in-order successor takes its place, balance included, when it
        has two children), then rebalance on the way up (at most ``limit`` steps)."""
        left, right, parent = self.left(node), self.right(node), self.parent(node)
        if left and right:
            successor = right
            for _ in range(limit):
                nearer = self.left(successor)
                if not nearer:
                    break
                successor = nearer
            if successor == right:
                start, left_shrank = successor, False
            else:
                start, left_shrank = self.parent(successor), True
                self._replace(start, successor, self.right(successor))
                write_field(self.mem, successor, _RIGHT, right)
                self._set_parent(right, successor)
            write_field(self.mem, successor, _LEFT, left)
            self._set_parent(left, successor)
            self._replace(parent, node, successor)
            self._set_balance(successor, self.balance(node))
        else:
            start = parent
            left_shrank = bool(parent) and self.left(parent) == node
            self._replace(parent, node, left or right)
        self._retrace(start, left_shrank, limit)

    def _retrace(self, node: int, left_shrank: bool, limit: int) -> None:
        """After a removal: the subtree on ``node``'s left (or right) is one shorter."""
        for _ in range(limit):
            if not node:
                return
            value = self.balance(node) + (1 if left_shrank else -1)
            if value in (-1, 1):
                self._set_balance(node, value)
                return  # the subtree kept its height
            top = node
            if value == 0:
                self._set_balance(node, 0)
            else:
                top, shorter = self._fix(node, value)
                if not shorter:
                    return
            parent = self.parent(top)
            left_shrank = bool(parent) and self.left(parent) == top
            node = parent
