"""TRL's GRPO on CPU with a DiscoRM reward model: the built-in default model is the policy, a reward model trained
by the quickstart gives the rewards, read in-process through the reward function and through `discorm serve`.

    discorm train examples/quickstart.yaml     # the reward model: saves/quickstart
    python examples/grpo_trl.py                # 3 GRPO steps each way; mean reward, its spread and sigma per step
    python examples/grpo_trl.py --rm saves/gauss --via server --reward-mode lower_quantile --reward-alpha 0.1

Needs TRL (`pip install trl`, in the dev extra); each step is 2 prompts x 2 completions of up to 24 tokens. The
printed sigma is the reward model's own (a distributional head: the mean predicted sigma of the step's
completions); the spread is the standard deviation of the step's rewards. Both ways give the same rewards.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from discorm.integrations.trl import reward_function
from discorm.model.builtin import pull_builtin_model

PROMPTS = ["What is 12 + 7?", "Tell me about volcanoes.", "What is the capital of France?",
           "How do bees make honey?", "Give me one tip for learning to cook.", "Why is the sky blue?"]


class PrintRewards(TrainerCallback):
    """One line per step: the mean reward TRL logged, its spread over the step's completions, and sigma."""

    def __init__(self, via: str):
        self.via = via

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "rewards/discorm/mean" in logs:
            sigma = f", sigma {logs['discorm/sigma']:.3f}" if "discorm/sigma" in logs else ""
            print(f"[{self.via}] step {state.global_step}: mean reward {logs['rewards/discorm/mean']:.3f} "
                  f"(spread {logs['rewards/discorm/std']:.3f}){sigma}", flush=True)


@contextmanager
def reward_server(rm: str):
    """`discorm serve RM` on a free loopback port, for the duration of the block; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "discorm.cli", "serve", rm, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"`discorm serve {rm}` exited with status {server.returncode}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def train(policy: str, reward, via: str, opts, out: Path) -> None:
    config = GRPOConfig(output_dir=str(out / via), max_steps=opts.steps, per_device_train_batch_size=4,
                        num_generations=2, max_completion_length=opts.max_tokens, learning_rate=1e-6, beta=0.0,
                        logging_steps=1, bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                        save_strategy="no", seed=0, disable_tqdm=True)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": text}]} for text in PROMPTS])
    GRPOTrainer(model=policy, reward_funcs=reward, args=config, train_dataset=dataset,
                callbacks=[PrintRewards(via)]).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rm", default="saves/quickstart", help="a DiscoRM run directory (the reward model)")
    parser.add_argument("--via", choices=["function", "server", "both"], default="both")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=24, help="longest completion")
    parser.add_argument("--reward-mode", default=None, help="e.g. lower_quantile (default: the model's own)")
    parser.add_argument("--reward-alpha", type=float, default=None)
    opts = parser.parse_args()
    if not Path(opts.rm, "discorm_config.json").is_file():
        raise SystemExit(f"{opts.rm} is not a DiscoRM run directory; train one first: "
                         "discorm train examples/quickstart.yaml")
    policy = str(pull_builtin_model())
    options = {"reward_mode": opts.reward_mode, "reward_alpha": opts.reward_alpha}
    with tempfile.TemporaryDirectory() as out:
        if opts.via in ("function", "both"):
            train(policy, reward_function(opts.rm, **options), "function", opts, Path(out))
        if opts.via in ("server", "both"):
            with reward_server(opts.rm) as url:
                train(policy, reward_function(url, **options), "server", opts, Path(out))


if __name__ == "__main__":
    main()
