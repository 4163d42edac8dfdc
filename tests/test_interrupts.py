"""spamgpt.interrupts: SIGINT and SIGTERM raised as Ctrl-C, or held for the training loop.
The end-to-end cases run in their own interpreter (signal handlers and the record are
process-wide); the unit tests in this one put the handlers and the record back."""

import signal
import subprocess
import sys
import threading

import pytest

from spamgpt import interrupts


def python(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_sigterm_raises_keyboard_interrupt_and_is_recorded() -> None:
    code = (
        "import os, signal\n"
        "from spamgpt import interrupts\n"
        "print(interrupts.received())\n"
        "interrupts.raise_on_signals()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    signal.pause()\n"
        "except KeyboardInterrupt as e:\n"
        "    print(e, interrupts.received())\n"
    )
    assert python(code) == ["None", "SIGTERM", "SIGTERM"]


def test_a_held_signal_is_noted_not_raised_and_the_handlers_come_back() -> None:
    code = (
        "import os, signal, time\n"
        "from spamgpt import interrupts\n"
        "interrupts.raise_on_signals()\n"
        "with interrupts.held() as pending:\n"
        "    print(pending.signal)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.1)\n"
        "    print(pending.name(), interrupts.received())\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    signal.pause()\n"
        "except KeyboardInterrupt as e:\n"
        "    print('raised', e)\n"
    )
    assert python(code) == ["None", "SIGINT", "SIGINT", "raised", "SIGTERM"]


def test_off_the_main_thread_nothing_is_held_and_nothing_fails() -> None:
    """Python runs signal handlers in its main thread only: held() elsewhere holds nothing
    (signal.signal would raise there) and leaves the main thread's handlers as they were."""
    code = (
        "import signal, threading\n"
        "from spamgpt import interrupts\n"
        "def hold():\n"
        "    with interrupts.held() as pending:\n"
        "        print(pending.signal)\n"
        "thread = threading.Thread(target=hold)\n"
        "thread.start()\n"
        "thread.join()\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    assert python(code) == ["None", "True"]


def test_release_raises_each_held_signal_again_for_the_handlers_put_back() -> None:
    """What replaced_dir needs: signals noted while held (not recorded: the handlers they are
    raised again for record them), then raised in order once the handlers are back."""
    code = (
        "import os, signal, time\n"
        "from spamgpt import interrupts\n"
        "interrupts.raise_on_signals()\n"
        "pending = interrupts.Pending().hold(record=False)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.1)\n"
        "print(pending.name(), interrupts.received())\n"
        "try:\n"
        "    pending.release()\n"
        "except KeyboardInterrupt as e:\n"
        "    print('raised', e, interrupts.received())\n"
        "print(signal.getsignal(signal.SIGTERM).__name__)\n"
    )
    assert python(code) == ["SIGTERM", "None", "raised", "SIGTERM", "SIGTERM", "_raise"]


@pytest.fixture
def handlers(monkeypatch: pytest.MonkeyPatch):
    """This process's SIGINT/SIGTERM handlers, put back after the test; an empty record."""
    monkeypatch.setattr(interrupts, "_received", [])
    before = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    yield before
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_each_signal_raises_its_name_and_the_first_is_the_one_received(handlers) -> None:
    assert interrupts.received() is None
    interrupts.raise_on_signals()
    assert [signal.getsignal(sig) for sig in interrupts.SIGNALS] == [interrupts._raise] * 2
    with pytest.raises(KeyboardInterrupt, match=r"^SIGTERM$"):
        signal.raise_signal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match=r"^SIGINT$"):
        signal.raise_signal(signal.SIGINT)
    assert interrupts.received() == "SIGTERM"
    assert interrupts._received == ["SIGTERM", "SIGINT"]


def test_held_signals_are_noted_in_order_and_recorded(handlers) -> None:
    interrupts.raise_on_signals()
    with interrupts.held() as pending:
        assert (pending.signal, pending.noted) == (None, [])
        assert [signal.getsignal(sig) for sig in interrupts.SIGNALS] == [pending._note] * 2
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        assert pending.noted == [signal.SIGINT, signal.SIGTERM]
        assert (pending.signal, pending.name()) == (signal.SIGTERM, "SIGTERM")  # the last
        assert interrupts._received == ["SIGINT", "SIGTERM"]
    assert [signal.getsignal(sig) for sig in interrupts.SIGNALS] == [interrupts._raise] * 2


def test_the_handlers_come_back_after_a_failed_block(handlers) -> None:
    with pytest.raises(ValueError), interrupts.held():
        raise ValueError("stopped")
    assert {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS} == handlers


def test_release_raises_the_first_noted_for_the_handlers_put_back(handlers) -> None:
    interrupts.raise_on_signals()
    pending = interrupts.Pending().hold(record=False)
    assert signal.getsignal(signal.SIGTERM) == pending._note
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGINT)
    assert interrupts._received == []  # not recorded while held: the handlers record them
    with pytest.raises(KeyboardInterrupt, match=r"^SIGTERM$"):
        pending.release()
    assert pending.noted == [] and interrupts._received == ["SIGTERM"]
    pending.restore()  # nothing left to restore: the handlers stay
    assert signal.getsignal(signal.SIGTERM) is interrupts._raise


def test_off_the_main_thread_hold_replaces_no_handler(handlers) -> None:
    held = []
    thread = threading.Thread(target=lambda: held.append(interrupts.Pending().hold()))
    thread.start()
    thread.join()
    assert held[0]._previous == {}
    assert {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS} == handlers
