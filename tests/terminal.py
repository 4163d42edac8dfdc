"""A real terminal for tests of what is drawn on one (tqdm's progress bars draw nothing off a
terminal): sys.stderr on a pseudo-terminal of 100 columns, and what reached it.

    with drawn() as screen:
        ...  # anything written to sys.stderr here goes to the terminal
    screen.text  # all of it, as the terminal received it (\\r between a bar's redraws)
"""

import contextlib
import fcntl
import os
import struct
import sys
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Screen:
    text: str = ""


@contextlib.contextmanager
def drawn(columns: int = 100) -> Iterator[Screen]:
    master, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    received: list[bytes] = []

    def read() -> None:  # a full terminal buffer would block the writer: drain it as it fills
        with contextlib.suppress(OSError):  # EIO once the follower side is closed
            while chunk := os.read(master, 1 << 16):
                received.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    screen = Screen()
    before = sys.stderr
    try:
        with open(follower, "w", encoding="utf-8") as tty:
            sys.stderr = tty
            try:
                yield screen
            finally:
                sys.stderr = before
        reader.join()
    finally:
        os.close(master)
    screen.text = b"".join(received).decode("utf-8", errors="replace")
