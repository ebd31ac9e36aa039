"""A transformers ``Trainer`` that checkpoints only what trains next to a frozen backbone.

TAP-PER's prefix encoder and SAILRec's projector are small modules around a frozen causal LM (plus, optionally, a
shared LoRA). Trainer's own checkpoints would write the whole wrapper, backbone included, at every save; these
save the module (and the adapter), and resume from the same files, so a killed run loses no steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch


def save_side_module(module: torch.nn.Module, out_dir: str | Path, key: str, config_file: str, weights_file: str,
                     extra: dict | None = None) -> Path:
    """``config_file`` holds ``{key: module.config, **extra}`` (the constructor's arguments and run settings),
    ``weights_file`` the state dict as safetensors."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(out / weights_file))
    (out / config_file).write_text(json.dumps({key: module.config, **(extra or {})}, indent=2) + "\n")
    return out


def load_side_module(cls, run_dir: str | Path, key: str, config_file: str, weights_file: str, made_by: str):
    """``(module in eval mode, saved settings)`` from a folder ``save_side_module`` wrote; a folder without the
    config is one error line naming the command (``made_by``) that makes such folders."""
    from safetensors.torch import load_file

    from llmrec.errors import LlmrecError

    run = Path(run_dir)
    if not (run / config_file).is_file():
        raise LlmrecError(f"{run} has no {config_file}: not a '{made_by}' output folder")
    meta = json.loads((run / config_file).read_text())
    module = cls(**meta[key])
    module.load_state_dict(load_file(str(run / weights_file)))
    return module.eval(), meta


def side_module_trainer(attr: str, save: Callable, weights_file: str, log_extra: Callable | None = None):
    """A ``Trainer`` subclass for models with a trained ``model.<attr>`` and a frozen ``model.backbone``.

    ``save(module, out_dir, extra)`` writes the module (``weights_file`` is its safetensors file, read on resume);
    ``log_extra(model)`` adds scalars to every logged loss line. ``module_extra`` (a dict passed to the trainer)
    is stored with every save.
    """
    from peft import PeftModel
    from transformers import Trainer

    class SideModuleTrainer(Trainer):
        def __init__(self, *args, module_extra: dict | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.module_extra = module_extra or {}

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            out = Path(output_dir or self.args.output_dir)
            if not self.args.should_save:
                return
            model = self.accelerator.unwrap_model(self.model)
            save(getattr(model, attr), out, self.module_extra)
            if isinstance(model.backbone, PeftModel):
                model.backbone.save_pretrained(out / "adapter")
            torch.save(self.args, out / "training_args.bin")

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            from safetensors.torch import load_file

            model = model or self.model
            getattr(model, attr).load_state_dict(load_file(str(Path(resume_from_checkpoint, weights_file))))
            if isinstance(model.backbone, PeftModel):
                from peft import set_peft_model_state_dict

                adapter = Path(resume_from_checkpoint, "adapter", "adapter_model.safetensors")
                set_peft_model_state_dict(model.backbone, load_file(str(adapter)))

        def log(self, logs: dict, *a, **kw) -> None:
            if "loss" in logs and log_extra is not None:
                logs = {**logs, **log_extra(self.accelerator.unwrap_model(self.model))}
            super().log(logs, *a, **kw)

    return SideModuleTrainer
