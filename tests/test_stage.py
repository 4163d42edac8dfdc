"""spamgpt.stage: what every stage script shares at exit."""

import subprocess
import sys


def test_a_stage_process_freezes_its_objects_before_the_final_collection() -> None:
    """An exit handler registered before skip_exit_collection runs after it (handlers run last
    in, first out) and sees every object frozen: the interpreter's last collection skips them."""
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
        "from spamgpt import stage\n"
        "stage.skip_exit_collection()\n"
        "print('before', gc.get_freeze_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, frozen = (int(line.split()[1]) for line in out.stdout.splitlines())
    assert before == 0 and frozen > 10_000  # the imports' objects
