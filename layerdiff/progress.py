"""The progress callback every long run takes: `progress(what is running, steps done, steps in all)`.
The console draws it as a bar; the TUI will post it to its screen; scripts pass None."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
