"""A reward server on a free loopback port in a background thread, and a small model to serve."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import torch

from discorm.model.reward_model import RewardModel
from tests.conftest import build_model

CHATS = [
    [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "The answer is 19."}],
    [{"role": "user", "content": "Tell me about bees."}, {"role": "assistant", "content": "yes"}],
    {"prompt": "Hi", "response": "Hello, how are you? I am fine."},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "moon?"},
                  {"role": "assistant", "content": "The moon orbits the Earth."}]},
]


def served_model(base_dir, run_dir, head: str = "gaussian") -> RewardModel:
    """A tiny model with perturbed (non-trivial) weights, saved and loaded back as a run directory."""
    model = build_model(base_dir, "full", head=head)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(run_dir)
    return RewardModel.from_pretrained(run_dir).eval()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(app, graceful_s: float | None = None):
    """Serve ``app`` on 127.0.0.1; yields (url, uvicorn server); stops it (gracefully) on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           timeout_graceful_shutdown=graceful_s))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(10)
