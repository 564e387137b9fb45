"""Structured events: every decision the model makes, naming its mechanism."""

from vbsim.trace.events import Event, Trace

__all__ = ["Event", "Trace"]
