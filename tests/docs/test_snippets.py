"""Every shell command and Python snippet of the documentation that is marked runnable runs here, on a tiny
random model standing in for the built-in default model; the ones marked skip are listed, skipped, with their
reason (`pytest -rs` prints them). The marker convention is in tests/docs/snippets.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import make_tokenizer
from tests.docs.snippets import all_snippets, is_fresh

REPO = Path(__file__).resolve().parents[2]
SNIPPETS = all_snippets()
RUN_PAGES = list(dict.fromkeys(s.page for s in SNIPPETS if s.action in ("run", "file")))
SKIPPED = [s for s in SNIPPETS if s.action == "skip"]
TIMEOUT_S = 900


def test_every_code_block_is_marked():
    unmarked = [s.where for s in SNIPPETS if s.action is None]
    assert not unmarked, ("code blocks without <!-- run -->, <!-- skip: REASON --> or <!-- file: NAME --> above "
                          f"them: {unmarked}")
    assert SKIPPED and RUN_PAGES


@pytest.mark.parametrize("snippet", SKIPPED, ids=[s.where for s in SKIPPED])
def test_skipped_snippet(snippet):
    pytest.skip(f"{snippet.where}: {snippet.reason}")


def _tiny_default_model(path: Path) -> None:
    """A 4-block random Llama with the test tokenizer, where the built-in default model is cached (the quick
    start trains its last 4 blocks)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    LlamaForCausalLM(config).save_pretrained(path)


def _sample_files(work: Path) -> None:
    """pairs.jsonl (explicit pairs) and rows.jsonl (prompt + response rows) from the built-in held-out pairs."""
    from discorm.data.demo import BUILTIN

    pairs = [row for row in BUILTIN["demo"]("test")][:24]
    with open(work / "pairs.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    with open(work / "rows.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": p["prompt"], "response": p["chosen"]}) + "\n" for p in pairs[:8])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(home: Path) -> dict:
    """The snippets' environment: the tiny default model, no network, no GPU, and a free PORT for a server."""
    env = dict(os.environ, DISCORM_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", TOKENIZERS_PARALLELISM="false",
               PORT=str(_free_port()))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(snippet, work: Path, env: dict) -> str:
    """Run (or write) one snippet in ``work``; returns a line saying how long it took."""
    if snippet.action == "file":
        (work / snippet.file).write_text(snippet.code)
        return f"{snippet.where}: written to {snippet.file}"
    if snippet.is_python:
        script = work / f"snippet_{snippet.line}.py"
        script.write_text(snippet.code)
        command = [sys.executable, script.name]
    else:
        command = ["bash", "-euo", "pipefail", "-c", snippet.code]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, f"{snippet.where} failed (exit {done.returncode}):\n{snippet.code}\n{output}"
    return f"{snippet.where}: ok in {time.perf_counter() - start:.1f} s"


def _run_page(page: str, work: Path, models: Path) -> tuple[list[str], AssertionError | None]:
    """Run a page's snippets in order in ``work``, with a DiscoRM home of its own (its data cache) whose models
    are the shared tiny ones; returns the log lines and the first failure."""
    home = work.parent / f"{work.name}_home"
    home.mkdir()
    (home / "models").symlink_to(models)
    env, lines = _env(home), []
    try:
        for snippet in (s for s in SNIPPETS if s.page == page and s.action in ("run", "file")):
            lines.append(_run(snippet, work, env))
    except (AssertionError, subprocess.TimeoutExpired) as failure:
        return lines, AssertionError(str(failure))
    return lines, None


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """{page: (log lines, failure or None)} for every page with runnable snippets. The fresh pages run first, in a
    folder with examples/ and sample data; the quick start leaves saves/quickstart there, and every other page
    starts from a copy of that folder. Those pages run two at a time (each snippet is a process; most of their
    time is spent in one thread)."""
    root = tmp_path_factory.mktemp("docs_sandbox")
    models = root / "models"
    _tiny_default_model(models / "smollm2-135m-instruct")
    fresh = root / "fresh"
    shutil.copytree(REPO / "examples", fresh / "examples")
    _sample_files(fresh)
    results, trained = {}, None
    for page in (p for p in RUN_PAGES if is_fresh(p)):
        work = root / page.replace("/", "_")
        shutil.copytree(fresh, work)
        results[page] = _run_page(page, work, models)
        if (work / "saves" / "quickstart" / "discorm_config.json").is_file():
            trained = work
    others = [p for p in RUN_PAGES if p not in results]
    if trained is None:
        failure = AssertionError("no fresh page trained saves/quickstart (docs/getting-started.md)")
        return {**results, **{page: ([], failure) for page in others}}

    def run(page: str):
        work = root / page.replace("/", "_")
        shutil.copytree(trained, work, symlinks=True)
        return _run_page(page, work, models)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results.update(zip(others, pool.map(run, others)))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_snippets_run(page, outcomes):
    lines, failure = outcomes[page]
    print("\n".join(lines))
    if failure is not None:
        raise failure
