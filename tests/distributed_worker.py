"""Run under torchrun by tests/train/test_distributed.py: trains with ``run_rm`` and writes, on the main
process, the scores of the trained in-memory model on a fixed batch (all processes take part in the forward
pass, as sharded models need)."""

import contextlib
import json
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback


def enable_cpu_fsdp() -> None:
    """Test harness only. Accelerate 1.15 attaches its FSDP plugin only on GPU-like devices; on a CPU it drops the
    plugin and trains with DDP. Re-attaching it right after the Trainer built its Accelerator makes the Trainer's
    and Accelerate's own FSDP2 code (fully_shard, the gathered full state dict, FSDP checkpoints) run on CPU/gloo."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    build = Trainer.create_accelerator_and_postprocess

    def build_with_fsdp(self):
        build(self)
        if self.args.fsdp_plugin_args is None:
            return
        state = self.accelerator.state
        plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True

    Trainer.create_accelerator_and_postprocess = build_with_fsdp


class ScoreProbe(TrainerCallback):
    def __init__(self, batch: dict, out: Path):
        self.batch, self.out = batch, out

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        gathered = contextlib.nullcontext()
        if args.deepspeed:  # ZeRO-3 keeps the weights partitioned outside the engine's own forward pass
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(model.parameters()))
        with torch.no_grad(), gathered:
            params = model(**{k: torch.tensor(v) for k, v in self.batch.items()}).head_params
        if args.process_index == 0:
            sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
            self.out.write_text(json.dumps({"head_params": params.tolist(), "sharded": sharded,
                                            "world_size": args.world_size, "max_steps": state.max_steps}))


def start_deepspeed_comm() -> None:
    """Test harness only. On a GPU, Accelerate starts DeepSpeed's communication layer; with use_cpu it starts
    plain gloo instead, and ZeRO-3's partitioned model construction then sees one process. Start it first."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("cpu_fsdp"):
        enable_cpu_fsdp()
    if spec["config"].get("deepspeed"):
        start_deepspeed_comm()
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    run_rm(*load_args(spec["config"]), callbacks=[ScoreProbe(spec["batch"], Path(spec["probe"]))])
    from discorm.cli import finish_distributed

    finish_distributed()


if __name__ == "__main__":
    main()
