"""SIGINT and SIGTERM: raised as Ctrl-C is, or held (Pending, the one holder) until the code
can act on them: the training loop between steps (held()), atomic.replaced_dir once the
folder it makes has a name to clean up (hold(), then release(), which raises them again).

Python's SIGTERM default ends the process without unwinding (no MLflow run marked KILLED, no
temporary file removed), so `raise_on_signals` makes both raise KeyboardInterrupt. Each one is
recorded too, because some extensions turn the KeyboardInterrupt into another error
(safetensors' load_file raises ValueError): an error after a signal is its consequence.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

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
    """SIGINT and SIGTERM noted instead of handled while held (hold() to restore()): `signal`
    is the last that arrived (None until one does); release() puts the handlers back and
    raises again what came, for them to handle.

    Held by Python's handlers, not by a signal mask: a process-directed signal that the main
    thread masks goes to another thread (torch's, a tokenizer's), and Python then runs the
    handler in the main thread anyway, at whatever line it has reached. Python handles
    signals in its main thread only: elsewhere there is nothing to hold."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.noted: list[int] = []  # every one, in order
        self._previous: dict[int, Any] = {}
        self._record = True

    def name(self) -> str:
        return signal.Signals(self.signal).name

    def hold(self, record: bool = True) -> "Pending":
        """Note SIGINT/SIGTERM from now on; `record`: also in received() (release() leaves
        that to the handlers it raises them for)."""
        self._record = record
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in SIGNALS}
        return self

    def _note(self, signum: int, frame: object) -> None:
        if self._record:
            _received.append(signal.Signals(signum).name)
        self.noted.append(signum)
        self.signal = signum

    def restore(self) -> None:
        """The handlers held() replaced, back."""
        for sig, handler in self._previous.items():  # None: not set from Python
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def release(self) -> None:
        """restore(), then raise again each signal noted, for the handlers now in place."""
        self.restore()
        noted, self.noted = self.noted, []
        for signum in noted:
            signal.raise_signal(signum)


@contextlib.contextmanager
def held() -> Iterator[Pending]:
    """Hold SIGINT/SIGTERM in the block: they are noted (and recorded), not raised, so a loop
    can stop where its state is consistent. The previous handlers come back afterwards."""
    pending = Pending().hold()
    try:
        yield pending
    finally:
        pending.restore()
