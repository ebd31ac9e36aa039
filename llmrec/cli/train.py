"""``llmrec train RECIPE --config configs/X.yaml [--field value ...]``.

Recipe flags are TRL's own config dataclasses (SFTConfig, GRPOConfig, ModelConfig for LoRA) plus an
llmrec section, parsed by TRL's ``TrlParser``: a YAML file keyed by field name, flags override it.
"""

from __future__ import annotations

from llmrec.cli.common import add_command

# recipe name -> ("module:function" taking ``(argv, prog)``, one-line description)
RECIPES = {
    "sft": ("llmrec.training.sft_recipe:main", "supervised fine-tuning with LoRA on prompt/completion or LaMP data"),
    "grpo-rerec": ("llmrec.training.grpo_recipe:rerec_main",
                   ("GRPO with ReRec reward shaping (format + NDCG + KG/CF alignment), reasoning-aware advantages "
                    "and an online curriculum")),
    "grpo-bump": ("llmrec.training.grpo_recipe:bump_main",
                  "GRPO for BUMP self-supervised user profiles (bidirectional in-batch ranking reward)"),
    "tapper": ("llmrec.training.tapper_recipe:main", "TAP-PER per-user soft prefixes (temporal attention, frozen LM)"),
    "rgcd": ("llmrec.training.rgcd_recipe:main",
             "RGCD-Rep: distil teacher reasoning into a student (SFT, LoRA), then transferable/residual item vectors"),
    "sailrec": ("llmrec.training.sailrec_recipe:main",
                "SAILRec: CF soft tokens with dual-side alignment and per-layer attention steering (frozen LM)"),
}


def register(sub) -> None:
    p = add_command(sub, "train", help="fine-tune the backbone with a recipe (TRL configs + llmrec section)",
                    description="Fine-tunes a backbone. Each recipe reads a YAML config (see configs/) whose keys "
                    "are the fields of TRL's config classes plus llmrec's; any field can be overridden as a "
                    "flag. 'llmrec train RECIPE --help' lists every field.\n\n"
                    "example: llmrec train sft --config configs/sft_lamp.yaml --max_steps 50")
    rsub = p.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    for name, (_, desc) in RECIPES.items():
        # --help is handled by the recipe's own TrlParser, which knows all the fields.
        r = rsub.add_parser(name, help=desc, add_help=False)
        r.set_defaults(func=run, passthrough=True)


def run(args) -> int:
    import importlib

    target, _ = RECIPES[args.recipe]
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(args.extra, prog=f"llmrec train {args.recipe}")
