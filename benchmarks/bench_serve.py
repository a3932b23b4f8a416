"""Load check of `discorm serve`: N concurrent clients on loopback for a bounded time.

Starts the server in-process on a free 127.0.0.1 port with a model (a run directory, or a tiny random model
built on the spot), then each client sends /score requests back to back until the time is up. Prints
requests/s, p50/p99 latency and the error count (which must be 0).

    python benchmarks/bench_serve.py                       # tiny model, 8 clients, 15 s
    python benchmarks/bench_serve.py --model saves/quickstart --clients 4 --seconds 30
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REQUEST = [
    {"prompt": "What is 12 + 7?", "response": "The answer is 19."},
    {"messages": [{"role": "user", "content": "Tell me about owls."},
                  {"role": "assistant", "content": "Owls are nocturnal birds of prey with silent flight."}]},
]


def start_server(model_dir: str, batch_size: int):
    import uvicorn

    from discorm.model.reward_model import RewardModel
    from discorm.serve.server import create_app

    model = RewardModel.from_pretrained(model_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model, batch_size), host="127.0.0.1", port=port,
                                           log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def client(url: str, deadline: float, latencies: list, errors: list) -> None:
    with httpx.Client(base_url=url, timeout=60) as session:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                response = session.post("/score", json=REQUEST)
                if response.status_code != 200:
                    errors.append(response.status_code)
                    continue
            except httpx.HTTPError as err:
                errors.append(repr(err))
                continue
            latencies.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a DiscoRM run directory; default: a tiny random model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--batch-size", type=int, default=16)
    opts = parser.parse_args()
    model_dir = opts.model
    if model_dir is None:
        from tests.conftest import build_model, make_model_dir

        folder = Path(tempfile.mkdtemp())
        build_model(make_model_dir(folder / "base")).save_pretrained(folder / "run")
        model_dir = str(folder / "run")
    server, url = start_server(model_dir, opts.batch_size)
    latencies, errors = [], []
    deadline = time.perf_counter() + opts.seconds
    threads = [threading.Thread(target=client, args=(url, deadline, latencies, errors)) for _ in range(opts.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    server.should_exit = True
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    print(f"model {model_dir}: {opts.clients} clients, {elapsed:.1f} s, {len(REQUEST)} items per request")
    print(f"requests/s {len(latencies) / elapsed:.1f}  items/s {len(latencies) * len(REQUEST) / elapsed:.1f}  "
          f"p50 {1000 * statistics.median(latencies):.1f} ms  p99 {1000 * p99:.1f} ms  errors {len(errors)}")


if __name__ == "__main__":
    main()
