"""Serving latency and throughput on 127.0.0.1: `mlflow models serve` against `spamgpt serve`
(LitServe, batching across requests; PyTorch, or onnxruntime on the model's ONNX export in
fp32 and int8; the int8 graph also with a worker a core, on one thread each), on random
weights and generated messages.

    python bench/serve.py [--shapes tiny|124M] [--tiny] [--requests N] [--seconds S] [--json OUT]
                          [--only WORDS...]

One model folder of random weights (bench/predict.py's), logged to a throwaway MLflow store;
each server below is started on it in turn, warmed up, and sent, for each load, up to
--requests requests or for up to --seconds seconds, whichever ends first:
  1 msg x 1: single-message requests, one at a time; 1 msg x 16: single-message requests
  from 16 threads at once; 64 msg x 4: 64-message requests from 4 threads.
It prints each load's p50/p95/p99 request latency and messages/s (messages answered over the
load's wall time), and checks every answer against `spamgpt classify --json` at the server's
precision (the ONNX fp32 graph's: at fp32), or, for the int8 graph, against that graph
scoring the messages in one call (serving.onnx_probabilities, the served ONNX model's path):
the label, and each probability within TOLERANCE. A request that fails or an answer that
differs is counted and makes the script exit non-zero. spamgpt serve's rows also give its
messages a call and its worker's CPU ms a message (from its `batch:` log lines): the engine's
cost, which other jobs on a shared machine change less than the wall time. Every row gives
the CPU ms a message of the server's whole process tree (HTTP processes, queues, worker) and
of the client (this process's threads): with the worker's, where the cores went. The int8 graph is
export.quantize_int8's (dynamic), ungated: random weights have no accuracy to keep.
The client's threads run on the same cores as the server (2 on the dev machine): its own
cost is in the figures. `--tiny`: the tests' tiny GPT-2, few requests (tests/test_bench.py).
"""

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from predict import model_folder
from workload import ROOT, sms_like

from spamgpt import runtime
from spamgpt.data import tokenized, tokenizer
from spamgpt.model import classifier
from spamgpt.serve import export

THRESHOLD = 0.5
# |served - reference| per probability. int8: the graph's answers in one call, which a
# message's batch-mates do not move (export.per_row_activations), to float rounding.
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "int8": 1e-4}
LOADS = [("1 msg x 1", 1, 1), ("1 msg x 16", 1, 16), ("64 msg x 4", 64, 4)]
SPAMGPT = [sys.executable, "-c", "from spamgpt.serve.cli import main; main()"]


@dataclass(frozen=True)
class Server:
    name: str
    precision: str  # what it computes in: fp32, bf16 (checked against classify's), int8
    args: tuple[str, ...]  # the command, less the port
    env: tuple[tuple[str, str], ...] = ()  # set for it on top of the bench's environment


def servers(model_uri: str, batch_timeout: float, graphs: dict[str, Path]) -> list[Server]:
    """The servers compared. MLflow's scoring server runs the pyfunc model at precision
    'auto' (bf16 where the CPU computes it natively, as classify's default); `graphs`: the
    model's ONNX exports by precision (fp32, int8) for `spamgpt serve --onnx`."""
    auto = runtime.resolve_precision("auto", torch.device("cpu"))
    mlflow = ("mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local")
    serve = (*SPAMGPT, "serve", "--model", model_uri, "--device", "cpu")
    timeout = ("--batch-timeout", str(batch_timeout))
    found = [
        Server(f"mlflow models serve ({auto})", auto, (*mlflow, "--host", "127.0.0.1")),
        # batch 1: LitServe without batching, its own cost against MLflow's scoring server
        Server(
            "spamgpt serve, batch 1 (fp32)",
            "fp32",
            (*serve, "--max-batch-size", "1", "--precision", "fp32"),
        ),
        Server(
            "spamgpt serve, batch 16 (fp32)",
            "fp32",
            (*serve, "--max-batch-size", "16", *timeout, "--precision", "fp32"),
        ),
    ]
    if runtime.bf16_supported(torch.device("cpu")):
        bf16 = (*serve, "--max-batch-size", "16", *timeout, "--precision", "bf16")
        found.append(Server("spamgpt serve, batch 16 (bf16)", "bf16", bf16))
        # OpenMP's threads spinning while they wait, as the worker's did before it set
        # OMP_WAIT_POLICY=PASSIVE (serve_batched.WORKER_ENV): what that costs here
        spinning = (("OMP_WAIT_POLICY", "ACTIVE"),)
        found.append(Server("spamgpt serve, batch 16 (bf16, spinning)", "bf16", bf16, spinning))
    for precision, graph in graphs.items():
        onnx = (*serve, "--onnx", str(graph))
        found.append(
            Server(f"spamgpt serve --onnx, batch 1 ({precision})", precision,
                   (*onnx, "--max-batch-size", "1"))
        )  # fmt: skip
        found.append(
            Server(f"spamgpt serve --onnx, batch 16 ({precision})", precision,
                   (*onnx, "--max-batch-size", "16", *timeout))
        )  # fmt: skip
    # a worker a core, each on one thread: no waiting for each other at every operator
    cores = runtime.available_cores()
    found.append(
        Server(f"spamgpt serve --onnx, batch 16, {cores} workers (int8)", "int8",
               (*serve, "--onnx", str(graphs["int8"]), "--max-batch-size", "16", *timeout,
                "--workers", str(cores)))
    )  # fmt: skip
    return found


def onnx_graphs(folder: Path, root: Path) -> dict[str, Path]:
    """The model's ONNX export (fp32) and its int8 quantization, as `spamgpt export --to onnx
    [--quantize int8]` writes them, without the gate."""
    model, meta = classifier.load(folder)
    graphs = {"fp32": root / "model.onnx", "int8": root / "model-int8.onnx"}
    export.to_onnx(model.eval(), meta, graphs["fp32"])
    export.quantize_int8(graphs["fp32"], graphs["int8"])
    return graphs


def graph_answers(folder: Path, graph: Path, pool: list[str]) -> dict:
    """The graph's answers to every message of the pool, scored in one call as the served
    ONNX model scores (serving.onnx_probabilities): text -> its answer."""
    import onnxruntime

    from spamgpt.data.batching import ModelInputs
    from spamgpt.serve import serving

    _, meta = classifier.load(folder)
    ids = tokenized.pack_ids(tokenized.encode(tokenizer.load(folder), pool), meta["max_length"])
    session = onnxruntime.InferenceSession(str(graph))
    probs = torch.from_numpy(serving.onnx_probabilities(session, ModelInputs(ids, None)))
    answers = classifier.answers(probs, classifier.classes_of(meta), THRESHOLD)
    return dict(zip(pool, answers, strict=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) of process `pid` and its descendants now alive."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@contextmanager
def started(args: tuple[str, ...], env: dict, log: Path) -> Iterator[tuple[int, int]]:
    """The server on a free port, in its own process group; (its port, its pid) once /ping
    answers."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*args, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{' '.join(args)} did not start:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have died on its own
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def batch_sizes(log: Path, seen: int) -> tuple[list[int], float, int]:
    """The messages of each engine call the server logged past its first `seen` calls
    (serve_batched's `batch: R requests, M messages, S s, C CPU s` lines), the worker's CPU
    seconds in them, and how many calls it logged."""
    if not log.exists():
        return [], 0.0, seen
    lines = [line for line in log.read_text().splitlines() if line.startswith("batch: ")]
    cpu = sum(float(line.split(", ")[3].removesuffix(" CPU s")) for line in lines[seen:])
    return [int(line.split()[3]) for line in lines[seen:]], cpu, len(lines)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_load(
    port: int, pool: list[str], per_request: int, threads: int, requests: int, seconds: float
) -> tuple[list[float], list[tuple[list[str], list[dict] | None]], float]:
    """(latencies in s, (texts, predictions or None if it failed) per request, wall time)."""
    lock, sent = threading.Lock(), [0]
    latencies, answered = [], []
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = sent[0]
                if i >= requests or time.monotonic() > deadline:
                    return
                sent[0] += 1
            texts = [pool[(i * per_request + k) % len(pool)] for k in range(per_request)]
            body = json.dumps({"inputs": texts})
            began = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = json.loads(response.read())
                predictions = payload["predictions"] if response.status == 200 else None
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                predictions = None
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                latencies.append(time.perf_counter() - began)
                answered.append((texts, predictions))

    began = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies, answered, time.perf_counter() - began


def classify_answers(model: Path, pool: list[str], precision: str, env: dict) -> dict:
    """`spamgpt classify --json` of every message of the pool: text -> its answer."""
    messages = model.parent / "pool.txt"
    messages.write_text("\n".join(pool) + "\n")
    out = subprocess.run(
        [*SPAMGPT, "classify", "--json", "--model", str(model), "--device", "cpu",
         "--precision", precision, "--threshold", str(THRESHOLD), "--file", str(messages)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {text: json.loads(line) for text, line in zip(pool, out.splitlines(), strict=True)}


def checked(answered: list, expected: dict, tolerance: float) -> tuple[int, int, float]:
    """(requests lost, answers wrong, largest probability difference) of a load."""
    lost = wrong = 0
    largest = 0.0
    for texts, predictions in answered:
        if predictions is None or len(predictions) != len(texts):
            lost += 1
            continue
        for text, p in zip(texts, predictions, strict=True):
            e = expected[text]
            diff = max(
                abs(p["probabilities"][c] - e["probabilities"][c]) for c in e["probabilities"]
            )
            largest = max(largest, diff)
            near = abs(e["spam_probability"] - THRESHOLD) <= tolerance
            if diff > tolerance or (p["label"] != e["label"] and not near):
                wrong += 1
    return lost, wrong, largest


# The servers that issue 34's serving targets compare (--targets).
TARGET_SERVERS = ("mlflow models serve", "batch 1 (int8)", "batch 16 (int8)", "workers (int8)")


def targets(rows: list[dict]) -> list[str]:
    """Issue 34's serving targets for each spamgpt server measured beside MLflow's, at
    concurrency 16 (1 msg x 16): (a) at least 3x MLflow's messages/s, (b) p95 latency at most
    2x MLflow's p50 at concurrency 1."""
    by = {(r["server"], r["load"]): r for r in rows}
    mlflow = next((r["server"] for r in rows if r["server"].startswith("mlflow")), None)
    if (mlflow, "1 msg x 1") not in by or (mlflow, "1 msg x 16") not in by:
        return []
    base, alone = by[mlflow, "1 msg x 16"], by[mlflow, "1 msg x 1"]
    lines = []
    for (server, load), r in by.items():
        if server == mlflow or load != "1 msg x 16":
            continue
        speed = r["messages_per_s"] / base["messages_per_s"]
        tail = r["p95_ms"] / alone["p50_ms"]
        lines.append(
            f"{server}: (a) {speed:.1f}x MLflow's messages/s at concurrency 16 "
            f"({'met' if speed >= 3 else 'not met'}); (b) p95 {tail:.1f}x MLflow's p50 at "
            f"concurrency 1 ({'met' if tail <= 2 else 'not met'})"
        )
    return lines


def logged_model(folder: Path, store: Path) -> str:
    """The folder logged (full: every tensor is in it) into a SQLite store; its runs:/ URI."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from spamgpt.serve import serving

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("serve", artifact_location=(store / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id)
    return serving.log_model(run_id, folder, THRESHOLD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny", choices=["tiny", "124M"])
    parser.add_argument("--tiny", action="store_true", help="few requests (tests/test_bench.py)")
    parser.add_argument("--requests", type=int, default=400, help="at most, per load")
    parser.add_argument("--seconds", type=float, default=30, help="at most, per load")
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--only", nargs="+", metavar="WORDS", help="only the servers whose name has one of these"
    )
    parser.add_argument(
        "--targets", action="store_true",
        help="issue 34's serving targets: MLflow's server and the int8 ones, 1 msg x 1 and x 16",
    )  # fmt: skip
    args = parser.parse_args()
    loads = LOADS[:2] if args.targets else LOADS
    requests, seconds = (24, 5.0) if args.tiny else (args.requests, args.seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = model_folder(root, args.shapes)
        uri = logged_model(folder, root)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        pool = [line.split("\t", 1)[1] for line in sms_like(512)]
        expected = {}
        graphs = onnx_graphs(folder, root)
        compared = servers(uri, args.batch_timeout, graphs)
        if args.tiny:  # the plain scoring server, the batching one and int8's: enough to test it
            compared = [compared[0], compared[2], compared[-1]]
        if args.only or args.targets:
            words = args.only or TARGET_SERVERS
            compared = [c for c in compared if any(word in c.name for word in words)]
        for server in compared:
            if server.precision == "int8" and "int8" not in expected:
                expected["int8"] = graph_answers(folder, graphs["int8"], pool)
            elif server.precision not in expected:
                expected[server.precision] = classify_answers(folder, pool, server.precision, env)
            log = root / "server.log"
            with started(server.args, {**env, **dict(server.env)}, log) as (port, pid):
                run_load(port, pool, 64, 2, 2, 60)  # warm-up: first calls, both shapes
                run_load(port, pool, 1, 2, 2, 60)
                for load, per_request, threads in loads:
                    _, _, seen = batch_sizes(log, 0)
                    began_load = load_average()
                    server_cpu, client_cpu = tree_cpu(pid), time.process_time()
                    latencies, answered, wall = run_load(
                        port, pool, per_request, threads, requests, seconds
                    )
                    server_cpu = tree_cpu(pid) - server_cpu
                    client_cpu = time.process_time() - client_cpu
                    sizes, cpu, _ = batch_sizes(log, seen)
                    tolerance = TOLERANCE[server.precision]
                    lost, wrong, largest = checked(answered, expected[server.precision], tolerance)
                    ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
                    messages = per_request * (len(answered) - lost)
                    row = {
                        "server": server.name, "load": load, "requests": len(answered),
                        "p50_ms": round(ms[0], 1), "p95_ms": round(ms[1], 1),
                        "p99_ms": round(ms[2], 1), "messages_per_s": round(messages / wall, 1),
                        "lost": lost, "wrong": wrong, "max_prob_diff": float(f"{largest:.2g}"),
                        # spamgpt serve's messages per engine call (MLflow's logs none)
                        "messages_per_call": round(np.mean(sizes), 1) if sizes else None,
                        # the worker's CPU a message: what the load of other jobs leaves alone
                        "cpu_ms_per_message": round(1000 * cpu / sum(sizes), 1) if sizes else None,
                        "server_cpu_ms_per_message": round(1000 * server_cpu / max(messages, 1), 1),
                        "client_cpu_ms_per_message": round(1000 * client_cpu / max(messages, 1), 1),
                        "load_average": f"{began_load} to {load_average()}",
                    }  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n{args.shapes} shapes, random weights, {os.cpu_count()} CPUs\n")
    print("| server | load | requests | p50 ms | p95 ms | p99 ms | messages/s | messages a "
          "call | worker CPU ms a message | server CPU ms a message | client CPU ms a message "
          "| lost | largest prob. diff | load average |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['server']} | {r['load']} | {r['requests']} | {r['p50_ms']} | {r['p95_ms']} "
            f"| {r['p99_ms']} | {r['messages_per_s']} | {r['messages_per_call'] or ''} "
            f"| {r['cpu_ms_per_message'] or ''} | {r['server_cpu_ms_per_message']} "
            f"| {r['client_cpu_ms_per_message']} | {r['lost']} | {r['max_prob_diff']} "
            f"| {r['load_average']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    for line in targets(rows):
        print(line)
    bad = sum(r["lost"] + r["wrong"] for r in rows)
    if bad:
        sys.exit(f"{bad} requests lost or answers differing from classify (int8: the graph's)")
    print("no request lost, every answer as classify's (int8: as the graph's in one call): yes")


if __name__ == "__main__":
    main()
