"""SIGINT and SIGTERM: raised as Ctrl-C is, or held until the training loop can act on them.

Python's SIGTERM default ends the process without unwinding (no MLflow run marked KILLED, no
temporary file removed), so `raise_on_signals` makes both raise KeyboardInterrupt. Each one is
recorded too, because some extensions turn the KeyboardInterrupt into another error
(safetensors' load_file raises ValueError): an error after a signal is its consequence.
"""

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[str] = []  # names of the signals that arrived, in order


def _raise(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    _received.append(name)
    raise KeyboardInterrupt(name)


def raise_on_signals() -> None:
    """From now on SIGINT and SIGTERM raise KeyboardInterrupt('SIGINT' or 'SIGTERM')."""
    for sig in SIGNALS:
        signal.signal(sig, _raise)


def received() -> str | None:
    """The first SIGINT/SIGTERM this process received ('SIGINT'), or None."""
    return _received[0] if _received else None


class Pending:
    """The signal that arrived while held, if any; `signal` is None until one does."""

    signal: int | None = None

    def name(self) -> str:
        return signal.Signals(self.signal).name


@contextlib.contextmanager
def held() -> Iterator[Pending]:
    """Hold SIGINT/SIGTERM in the block: they are noted (and recorded), not raised, so a loop
    can stop where its state is consistent. The previous handlers come back afterwards."""
    pending = Pending()

    def note(signum: int, frame: object) -> None:
        _received.append(signal.Signals(signum).name)
        pending.signal = signum

    previous = {sig: signal.signal(sig, note) for sig in SIGNALS}
    try:
        yield pending
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
