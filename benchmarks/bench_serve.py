"""Load check of `discorm serve`, without and with a mix of faulty clients, on loopback, bounded in time.

Starts the server in-process on a free 127.0.0.1 port, with an API key, re-templating from a policy tokenizer (the
model's own), and a model (a run directory, or a tiny random model built on the spot); an unknown policy tokenizer
must be refused at start. Phase 1: N good clients send /score requests back to back for --seconds.
Phase 2: the same good clients, interleaved with faulty ones for another --seconds: malformed JSON, oversized
bodies, bad items, unknown keys, bad reward options, a wrong API key, completions without a prompt, no
completions, an empty completion, policy texts that cannot be parsed, an empty /classify input, a JSON body sent as
text/plain, a Host that is not the loopback's (DNS rebinding), a chat of a system turn only, a chat that ends with
the user's turn, /v1/embeddings requests with no input, token ids beyond the vocabulary, an empty id list, an input
that is neither, an unknown encoding_format or no API key, tool calls whose arguments are not JSON or that have no
name, a tool turn without a call, tools that are not a list, chat_template_kwargs that name an argument of the
template call or are not an object, a reasoning_content that is not a text, bad images (not an image, invalid
base64, too many pixels or bytes, more placeholders than images, a path out of the media root by ``..`` or an
absolute path, a URL, an image in the response, an image part without its image, a video part, a bad image in
/classify's multimodal chat, TRL's images column of the wrong length), slow clients (a body trickling in, a byte
at a time) and clients that disconnect mid-request, one of each kind, all in a separate process (so that their own
work does not hold the server's interpreter lock). With --vlm the model is a tiny random LLaVA served with a media
root, so that the image faults meet the image checks (a text model refuses every image as text-only).
Prints good-request throughput and p50/p99 latency for both phases, what the faulty requests got, and the number
of good requests that failed and of faulty requests answered otherwise than expected, which must both be 0.

    python benchmarks/bench_serve.py                       # tiny model, 8 good clients, 3 rounds of 2 x 10 s
    python benchmarks/bench_serve.py --model saves/quickstart --clients 4 --seconds 20 --rounds 2
    python benchmarks/bench_serve.py --vlm --clients 2 --seconds 3 --rounds 1   # the image checks, briefly
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REQUEST = [
    {"prompt": "What is 12 + 7?", "response": "The answer is 19."},
    {"messages": [{"role": "user", "content": "Tell me about owls."},
                  {"role": "assistant", "content": "Owls are nocturnal birds of prey with silent flight."}]},
]
MAX_BODY = 1_000_000
TIMEOUT_S = 5.0
API_KEY = "bench-key"
KEY = {"X-API-Key": API_KEY}
JSON = {**KEY, "content-type": "application/json"}
USER, ANSWER = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}
MAX_IMAGE_PIXELS, MAX_IMAGE_BYTES = 256 * 256, 200_000


def _png(size: tuple[int, int]) -> str:
    from discorm.data.images import data_uri

    return data_uri(Image.new("RGB", size, "red"))


def _with_image(ref, prompt: str = "What is it?") -> dict:
    return {"prompt": prompt, "response": "A red square.", "images": [ref]}


def _chat_image(url: str) -> list:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What is it?"}]}, ANSWER]


IMAGE_FAULTS = {  # all 422, naming the item
    "image-not-an-image": [_with_image("data:image/png;base64,aGVsbG8=")],
    "image-bad-base64": [_with_image("data:image/png;base64,@@@")],
    "image-too-many-pixels": [_with_image(_png((300, 300)))],
    "image-too-many-bytes": [_with_image("data:image/png;base64," + "A" * (MAX_IMAGE_BYTES * 2))],
    "image-placeholders": [_with_image(_png((28, 28)), "<image> or <image>?")],
    "image-dot-dot": [_with_image("../outside.png")],
    "image-absolute-path": [_with_image("/etc/passwd")],
    "image-url": [_with_image("http://127.0.0.1:9/cat.png")],
    "image-in-response": [[USER, {"role": "assistant", "content": [{"type": "image_url",
                                                                   "image_url": {"url": _png((28, 28))}}]}]],
    "image-part-empty": [[{"role": "user", "content": [{"type": "image"}]}, ANSWER]],
    "image-video-part": [[{"role": "user", "content": [{"type": "video_url", "video_url": "v.mp4"}]}, ANSWER]],
}
FAULTS = {  # kind -> (route, httpx request arguments, the status it must get)
    "malformed": ("/score", {"content": b'{"inputs": [', "headers": JSON}, 400),
    "oversized": ("/score", {"content": json.dumps([{"prompt": "x" * MAX_BODY, "response": "y"}]).encode(),
                             "headers": JSON}, 413),
    "bad-items": ("/get_reward", {"json": {"query": ["fine", ""]}, "headers": KEY}, 422),
    "unknown-key": ("/score", {"json": {"inputs": REQUEST, "reward_mod": "mean"}, "headers": KEY}, 422),
    "bad-options": ("/score", {"json": {"inputs": REQUEST, "reward_alpha": 1.5}, "headers": KEY}, 422),
    "wrong-key": ("/score", {"json": REQUEST, "headers": {"X-API-Key": "guess"}}, 401),
    "no-prompt": ("/score", {"json": {"prompts": ["Hi"], "completions": ["a", "b"]}, "headers": KEY}, 422),
    "no-completions": ("/score", {"json": {"prompts": [], "completions": []}, "headers": KEY}, 422),
    "empty-completion": ("/score", {"json": {"prompts": [[{"role": "user", "content": "Hi"}]], "completions": [[]]},
                                    "headers": KEY}, 422),
    "unparseable": ("/get_reward", {"json": {"query": ["not rendered by any chat template"]}, "headers": KEY}, 422),
    "empty-classify": ("/classify", {"json": {"model": "rm", "input": []}, "headers": KEY}, 422),
    "text-plain": ("/score", {"content": json.dumps(REQUEST).encode(),
                              "headers": {**KEY, "content-type": "text/plain"}}, 415),
    "bad-host": ("/score", {"json": REQUEST, "headers": {**KEY, "host": "rebound.example"}}, 421),
    "system-only": ("/score", {"json": [[{"role": "system", "content": "Be brief."}]], "headers": KEY}, 422),
    "user-last": ("/score", {"json": [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                       {"role": "user", "content": "And owls?"}]], "headers": KEY}, 422),
    "embed-empty": ("/v1/embeddings", {"json": {"model": "rm", "input": []}, "headers": KEY}, 422),
    "embed-bad-id": ("/v1/embeddings", {"json": {"model": "rm", "input": [[5, 10**9]]}, "headers": KEY}, 422),
    "embed-empty-ids": ("/v1/embeddings", {"json": {"model": "rm", "input": [[]]}, "headers": KEY}, 422),
    "embed-not-text": ("/v1/embeddings", {"json": {"model": "rm", "input": [{"role": "user"}]}, "headers": KEY}, 422),
    "embed-encoding": ("/v1/embeddings", {"json": {"input": "Hi", "encoding_format": "int8"}, "headers": KEY}, 422),
    "embed-no-key": ("/v1/embeddings", {"json": {"model": "rm", "input": "Hi"}}, 401),
    "tool-args-not-json": ("/score", {"json": [[USER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": "{x"}}]}]], "headers": KEY}, 422),
    "tool-no-name": ("/score", {"json": [[USER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"arguments": {}}}]}]], "headers": KEY}, 422),
    "tool-turn-no-call": ("/score", {"json": [[USER, {"role": "tool", "content": "18 C"}, ANSWER]], "headers": KEY},
                          422),
    "tools-not-list": ("/score", {"json": [{"messages": [USER, ANSWER], "tools": {"name": "f"}}], "headers": KEY}, 422),
    "kwargs-reserved": ("/score", {"json": [{"messages": [USER, ANSWER], "chat_template_kwargs": {"tokenize": True}}],
                                   "headers": KEY}, 422),
    "kwargs-not-object": ("/score", {"json": [{"messages": [USER, ANSWER], "chat_template_kwargs": 3}],
                                     "headers": KEY}, 422),
    "trace-not-text": ("/score", {"json": [[USER, {**ANSWER, "reasoning_content": ["x"]}]], "headers": KEY}, 422),
    **{kind: ("/score", {"json": [REQUEST[0], *items], "headers": KEY}, 422) for kind, items in IMAGE_FAULTS.items()},
    "classify-bad-image": ("/classify", {"json": {"model": "rm", "messages": _chat_image("data:image/png;base64,AAAA")},
                                         "headers": KEY}, 422),
    "trl-images-length": ("/score", {"json": {"prompts": [[USER]] * 2, "completions": [[ANSWER]] * 2,
                                              "images": [[_png((28, 28))]]}, "headers": KEY}, 422),
}
RAW_FAULTS = {"slow": 408, "disconnecting": "disconnected"}  # on a raw socket


def start_server(model_dir: str, batch_size: int):
    import uvicorn

    from discorm.errors import ModelError
    from discorm.model.reward_model import RewardModel
    from discorm.serve.server import create_app

    model = RewardModel.from_pretrained(model_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        create_app(model, policy_tokenizer="./no-such-policy-tokenizer")
        print("an unknown policy tokenizer was accepted at start")
        sys.exit(1)
    except ModelError as err:
        print(f"an unknown policy tokenizer is refused at start: {str(err)[:100]}...")
    app = create_app(model, batch_size, max_body_bytes=MAX_BODY, request_timeout_s=TIMEOUT_S, api_key=API_KEY,
                     policy_tokenizer=model.tokenizer, media_root=tempfile.mkdtemp(),
                     max_image_pixels=MAX_IMAGE_PIXELS, max_image_bytes=MAX_IMAGE_BYTES)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


def good_client(url: str, deadline: float, latencies: list, failures: list, expected: list) -> None:
    with httpx.Client(base_url=url, timeout=60, headers=KEY) as session:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                response = session.post("/score", json=REQUEST)
                if response.status_code != 200 or max(
                        abs(a - b) for a, b in zip(response.json()["rewards"], expected)) > 1e-4:
                    failures.append(f"{response.status_code} {response.text[:80]}")
                    continue
            except httpx.HTTPError as err:
                failures.append(repr(err))
                continue
            latencies.append(time.perf_counter() - start)


def _raw(port: int, head: bytes, body: bytes = b"", trickle_s: float = 0.0, close_early: bool = False) -> str:
    """One HTTP request on a raw socket: the body sent at once or a byte every ``trickle_s``, or the connection
    closed before the answer (``close_early``). Returns the status line's code or what happened."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + 5) as sock:
        sock.sendall(head)
        if trickle_s:
            for byte in body:
                if _readable(sock):  # answered (408) before the body was complete
                    break
                sock.sendall(bytes([byte]))
                time.sleep(trickle_s)
        else:
            sock.sendall(body)
        if close_early:
            return "disconnected"
        reply = sock.recv(64).decode(errors="replace")
    return reply.split(" ")[1] if reply.startswith("HTTP/") else "no answer"


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def _post(port: int, body: bytes) -> bytes:
    return (f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n").encode()


def fault_client(kind: str, url: str, port: int, deadline: float, outcomes: Counter) -> None:
    good = json.dumps(REQUEST).encode()
    with httpx.Client(base_url=url, timeout=60) as session:
        while time.perf_counter() < deadline:
            try:
                if kind in FAULTS:
                    route, request, _ = FAULTS[kind]
                    result = session.post(route, **request).status_code
                elif kind == "slow":  # a body that never finishes arriving in time
                    result = _raw(port, _post(port, good), good, trickle_s=0.5)
                else:  # disconnecting: half a body, then gone; and a whole request, gone before the answer
                    _raw(port, _post(port, good), good[: len(good) // 2], close_early=True)
                    result = _raw(port, _post(port, good), good, close_early=True)
            except (httpx.HTTPError, OSError) as err:
                result = type(err).__name__
            outcomes[f"{kind} -> {result}"] += 1
            time.sleep(0.05)


def fault_clients(url: str, port: int, seconds: float, results) -> None:
    """One faulty client of each kind, in their own process (their own work does not hold the server's GIL)."""
    outcomes, deadline = Counter(), time.perf_counter() + seconds
    threads = [threading.Thread(target=fault_client, args=(kind, url, port, deadline, outcomes))
               for kind in (*FAULTS, *RAW_FAULTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + TIMEOUT_S + 30)
    results.put(dict(outcomes))


def phase(url: str, port: int, clients: int, seconds: float, expected: list, faults: bool) -> dict:
    latencies, failures, outcomes = [], [], Counter()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    faulty = context.Process(target=fault_clients, args=(url, port, seconds, results)) if faults else None
    threads = [threading.Thread(target=good_client, args=(url, time.perf_counter() + seconds, latencies, failures,
                                                          expected)) for _ in range(clients)]
    if faulty:
        faulty.start()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - start
    if faulty:
        outcomes.update(results.get(timeout=seconds + TIMEOUT_S + 60))
        faulty.join()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    return {"rps": len(latencies) / elapsed, "p50": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99": 1000 * p99, "good": len(latencies), "failed": failures, "outcomes": outcomes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a DiscoRM run directory; default: a tiny random model")
    parser.add_argument("--clients", type=int, default=8, help="good clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the two phases, alternating")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vlm", action="store_true", help="without --model: a tiny random LLaVA reward model")
    opts = parser.parse_args()
    model_dir = opts.model
    if model_dir is None:
        from tests.conftest import build_model, make_model_dir
        from tests.model.multimodal_models import make_vlm

        folder = Path(tempfile.mkdtemp())
        base = make_vlm(folder / "base", "llava")[0] if opts.vlm else make_model_dir(folder / "base")
        build_model(base).save_pretrained(folder / "run")
        model_dir = str(folder / "run")
    import torch

    from benchmarks.bench_throughput import matmul_peak

    threads = torch.get_num_threads()
    print(f"fp32 matmul peak (2048x2048, {threads} threads): {matmul_peak(threads):.0f} GFLOP/s")
    server, port = start_server(model_dir, opts.batch_size)
    url = f"http://127.0.0.1:{port}"
    expected = httpx.post(f"{url}/score", json=REQUEST, headers=KEY, timeout=60).json()["rewards"]
    print(f"model {model_dir}: {opts.clients} good clients, {opts.seconds:.0f} s per phase, {len(REQUEST)} items "
          f"per request, {opts.rounds} rounds")
    runs = {"good clients only": [], "with the fault mix": []}
    for round_ in range(1, opts.rounds + 1):  # the phases alternate: this machine's speed drifts
        for name, faults in (("good clients only", False), ("with the fault mix", True)):
            r = phase(url, port, opts.clients, opts.seconds, expected, faults)
            runs[name].append(r)
            print(f"round {round_}: {name}: {r['rps']:.1f} good requests/s, p50 {r['p50']:.1f} ms, p99 "
                  f"{r['p99']:.1f} ms, {r['good']} good requests, {len(r['failed'])} failed")
    print(f"\nmedians of {opts.rounds} rounds:\n")
    print("| phase | good requests/s | p50 | p99 | good requests | good requests failed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in runs.items():
        med = {key: statistics.median(r[key] for r in rs) for key in ("rps", "p50", "p99")}
        print(f"| {name} | {med['rps']:.1f} | {med['p50']:.1f} ms | {med['p99']:.1f} ms | "
              f"{sum(r['good'] for r in rs)} | {sum(len(r['failed']) for r in rs)} |")
    outcomes = sum((r["outcomes"] for r in runs["with the fault mix"]), Counter())
    must_get = {**{kind: status for kind, (_, _, status) in FAULTS.items()}, **RAW_FAULTS}
    print("\nfaulty requests, all rounds (kind -> answer: count):")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome}: {count}")
    unexpected = [o for o in outcomes if o.split(" -> ")[1] != str(must_get[o.split(" -> ")[0]])]
    failures = [f for rs in runs.values() for r in rs for f in r["failed"]]
    health = httpx.get(f"{url}/health", timeout=10).json()
    print(f"\ngood requests that failed: {len(failures)}; faulty requests answered otherwise than expected: "
          f"{sum(outcomes[o] for o in unexpected)} {unexpected}; queue depth after the run: {health['queue_depth']}")
    for failure in failures[:5]:
        print("  ", failure)
    server.should_exit = True
    sys.exit(1 if failures or unexpected else 0)


if __name__ == "__main__":
    main()
