#!/usr/bin/env bash
# The GPU check (bench/gpu.py: its docstring says what it runs and writes), from any directory:
#     bench/gpu.sh --data SMSSpamCollection [--tokenizer DIR] [--out DIR] [--budget S] [--cpu-tiny]
# This checkout first on PYTHONPATH (what is there already stays: the GPU machine's wheels),
# unbuffered output so that a log read mid-run is current.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$root/bench/gpu.py" "$@"
