"""DESIGN.md's one rule, enforced (issue 10 part 2)."""
