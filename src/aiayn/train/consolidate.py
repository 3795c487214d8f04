"""`aiayn checkpoint consolidate`: an FSDP run's sharded state (`sharded/`, torch.distributed.checkpoint, one shard
per process) as an ordinary model folder (safetensors), which every other command takes. It runs in one process,
without torchrun: DCP reads the shards of any number of processes into whole tensors."""

from __future__ import annotations

from pathlib import Path

import yaml

from aiayn.config import ModelConfig
from aiayn.errors import ModelFolderError
from aiayn.model import build_model
from aiayn.modelfile import TOKENIZER_FILES, tokenizer_kind
from aiayn.train import checkpoint as ckpt
from aiayn.train.saving import SHARDED, load_shards, sharded_state

__all__ = ["consolidate"]


def consolidate(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the weights of `checkpoint`'s sharded state, with its config and tokenizer, as model folder `out`."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    folder = Path(checkpoint)
    if not folder.is_dir():
        raise ModelFolderError(f"{checkpoint}: no such checkpoint folder")
    folder = folder.resolve()
    if not (folder / SHARDED).is_dir():
        raise ModelFolderError(f"{checkpoint}: no {SHARDED}/ folder: not a checkpoint of a train.parallel 'fsdp' "
                               "run (its model.safetensors is already whole)")  # fmt: skip
    kind = tokenizer_kind(ckpt.verify(folder))  # every file, the shards included, as its manifest lists them
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    tokenizer = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES[kind]}
    model = build_model(ModelConfig.from_dict(config["model"]))
    state = sharded_state(model)
    load_shards(state, folder / SHARDED, distributed_run=False)
    set_model_state_dict(model, state["model"])
    return ckpt.save_model_folder(out, model, config, tokenizer, kind)
