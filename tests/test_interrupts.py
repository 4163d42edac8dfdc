"""spamgpt.interrupts: SIGINT and SIGTERM raised as Ctrl-C, or held for the training loop.
Each case runs in its own interpreter: signal handlers and the record are process-wide."""

import subprocess
import sys


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
