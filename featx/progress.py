"""Progress bars on stderr, drawn by tqdm.

On a terminal the bar is redrawn in place (per update, with rate and ETA).  When stderr is a file
or a pipe (a log, CI), carriage returns would pile up into one unreadable line, so the same
information is printed as plain lines instead: one when the bar starts, then at most one every
``LOG_EVERY`` seconds, and the final one.

>>> with progress_bar(3, "demo", unit="item", enabled=False) as bar:   # prints nothing
...     bar.update(3)
"""

from __future__ import annotations

import sys

LOG_EVERY = 10.0  # seconds between two lines when stderr is not a terminal
PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class _Lines:
    """A stream for tqdm that turns each in-place redraw (``"\\r" + text``) into a line of its own."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, desc: str, *, unit: str = "it", enabled: bool = True):
    """A ``tqdm`` bar over ``total`` steps on stderr (see the module docstring); nothing at all
    when ``enabled`` is False.

    Parameters
    ----------
    total : int
        Steps the bar counts up to.
    desc : str
        Text in front of the bar.
    unit : str
        Name of a step, shown in the rate (``"sample"`` → ``12.50sample/s``).
    enabled : bool
        False gives a silent bar whose methods do nothing.

    Returns
    -------
    tqdm.tqdm
        Call ``update(n)``, ``set_postfix_str(text)`` and ``close()`` (or use it as a context manager).
    """
    from tqdm import tqdm

    stream = sys.stderr
    terminal = stream.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=True, smoothing=0,
                file=stream if terminal else _Lines(stream), mininterval=0.1 if terminal else LOG_EVERY,
                dynamic_ncols=terminal, bar_format=None if terminal else PLAIN_FORMAT)
