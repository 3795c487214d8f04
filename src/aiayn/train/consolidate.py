"""`aiayn checkpoint consolidate`: an FSDP run's sharded state (`sharded/`, torch.distributed.checkpoint, one shard
per process) as an ordinary model folder (safetensors), which every other command takes. It runs in one process,
without torchrun: DCP reads the shards of any number of processes into whole tensors."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from aiayn.config import ModelConfig
from aiayn.errors import ModelFolderError
from aiayn.model import build_model
from aiayn.modelfile import MANIFEST, TOKENIZER_FILES, tokenizer_kind
from aiayn.train import checkpoint as ckpt
from aiayn.train.saving import SHARDED, load_shards, sharded_state

__all__ = ["consolidate"]


def consolidate(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the weights of `checkpoint`'s sharded state, with its config and tokenizer, as model folder `out`."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    folder = Path(checkpoint).resolve()
    if not (folder / SHARDED).is_dir():
        raise ModelFolderError(f"{checkpoint}: no {SHARDED}/ folder: not a checkpoint of a train.parallel 'fsdp' "
                               "run (its model.safetensors is already whole)")  # fmt: skip
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{checkpoint}: cannot read its {MANIFEST} or config.yaml ({e})") from None
    kind = tokenizer_kind(manifest)
    tokenizer = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES[kind]}
    model = build_model(ModelConfig.from_dict(config["model"]))
    state = sharded_state(model)
    load_shards(state, folder / SHARDED, distributed_run=False)
    set_model_state_dict(model, state["model"])
    if kind in ("bpe", "char"):
        return ckpt.save_checkpoint(Path(out), model=model, config=config, tokenizer_json=tokenizer["tokenizer.json"])
    return ckpt.save_checkpoint(Path(out), model=model, config=config, tokenizer_files=tokenizer, tokenizer_kind=kind)
