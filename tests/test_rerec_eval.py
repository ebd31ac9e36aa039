"""ReRec evaluation (parsed \\boxed rankings -> HR/NDCG/validity) and the SFT warm-start answers."""

from __future__ import annotations

import math

import pytest

from llmrec.eval.rerec_eval import score_completions
from llmrec.training.rerec_sft import SftAnswerTemplate, answer_ranking, rerec_sft_examples, sft_answer


def _task(target_pos: int, n: int = 5) -> dict:
    cands = [f"i{j}" for j in range(n)]
    attrs = [["Comedy"] if j % 2 else ["Drama"] for j in range(n)]
    return {"task_id": f"t{target_pos}", "prompt": [{"role": "user", "content": "rank"}], "candidates": cands,
            "candidate_titles": [f"Title {j}" for j in range(n)], "targets": [cands[target_pos]],
            "target_attributes": attrs[target_pos], "candidate_attributes": attrs,
            "candidate_pas": [0.1 * j for j in range(n)]}


def test_score_completions_hand_computed():
    tasks = [_task(0), _task(2), _task(4), _task(1)]
    completions = [
        "Title 0 fits. \\boxed{1, 2, 3}",  # target at rank 1
        "\\boxed{2, 1, 3}",  # target (number 3) at rank 3
        "no box at all",  # malformed: a miss
        "\\boxed{9}",  # out of range: a miss
    ]
    r = score_completions(tasks, completions)
    assert r["hr@1"] == pytest.approx(1 / 4)
    assert r["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert r["mrr"] == pytest.approx((1 + 1 / 3) / 4)
    assert r["format_valid"] == pytest.approx(2 / 4)
    assert r["status"] == {"ok": 2, "no-answer": 1, "out-of-range": 1}
    # lenient: the out-of-range box is read too but holds nothing in range; a duplicate box counts there only
    assert r["lenient/ndcg@10"] == pytest.approx(r["ndcg@10"])
    dup = score_completions([_task(1)], ["\\boxed{2, 2, 1}"])
    assert dup["hr@1"] == 0.0 and dup["lenient/hr@1"] == 1.0 and dup["status"] == {"duplicate": 1}


def test_reasoning_choice_is_scored_apart_from_the_box(tmp_path):
    from llmrec.eval.rerec_eval import compare_runs
    from llmrec.rewards.rerec import first_named_candidate

    tasks = [_task(0), _task(2), _task(1), _task(3)]
    completions = [
        "The user asks for Drama: [1] Title 0. Candidates 3, 5 come next. \\boxed{1, 3, 5}",  # named and kept
        "Item 3 fits best; item 1 next. \\boxed{1, 3}",  # names the target, boxes another first: lost
        "Candidate 4 fits. \\boxed{2, 2}",  # names a wrong item (the duplicate box is a miss either way)
        "[4] is it, [9] too. \\boxed{4, 4}",  # names the target, breaks the box: lost
    ]
    assert [first_named_candidate(c, 5) for c in completions] == [0, 2, 3, 3]
    # numbers inside the box are not reasoning; an out-of-range first number names nothing
    assert first_named_candidate("\\boxed{3, 1}", 5) is None
    assert first_named_candidate("[7] then [3]. \\boxed{3}", 5) is None
    r = score_completions(tasks, completions)
    assert r["hr@1"] == pytest.approx(1 / 4)
    assert r["reasoning/hr@1"] == pytest.approx(3 / 4)
    assert r["reasoning/box_lost"] == pytest.approx(2 / 4)
    a = _write_run(tmp_path / "a", tasks, completions)
    b = _write_run(tmp_path / "b", tasks, ["\\boxed{1}"] * 4)  # no reasoning: names nothing
    cmp = compare_runs([a], [b], metric="reasoning/hr@1")
    assert cmp["a"]["mean"] == pytest.approx(3 / 4) and cmp["b"]["mean"] == 0.0
    assert (cmp["paired"]["wins"], cmp["paired"]["losses"], cmp["paired"]["ties"]) == (3, 0, 1)


def test_sft_answer_is_a_valid_reasoned_answer_with_the_target_first():
    from llmrec.rewards.rerec import format_reward, ndcg_reward, parse_answer

    task = _task(3)
    text = sft_answer(task)
    answer = parse_answer(text, 5)
    assert answer.status == "ok" and answer.ranking[0] == 3
    assert "Title 3" in text and "Comedy" in text
    assert not text.startswith("Comedy:")  # no scan by default
    scanning = SftAnswerTemplate(**{**vars(SftAnswerTemplate.load()), "scan": "{attribute}: {numbers}."})
    assert sft_answer(task, scanning).startswith("Comedy: 2, 4. ")  # candidate numbers holding each need attribute
    kw = {k: [task[k]] for k in task}
    assert format_reward([None], [text], **kw) == [1.0] and ndcg_reward([None], [text], **kw) == [1.0]
    # runners-up: the other Comedy items first (attribute overlap), higher PAS first
    assert answer_ranking(task) == [3, 1, 4, 2, 0]
    ex = rerec_sft_examples([task])[0]
    assert ex["prompt"] == task["prompt"] and ex["completion"][0]["role"] == "assistant"


def test_named_box_lists_only_the_items_the_reasoning_named():
    from llmrec.rewards.rerec import parse_answer

    task = _task(3)  # target number 4 (Comedy); number 2 is the only other Comedy candidate
    named = SftAnswerTemplate.load("rerec/sft_answer_named_box.yaml")
    text = sft_answer(task, named)
    assert text.endswith("Candidates 2 share part of the request, so they come next. \\boxed{4, 2}")
    assert parse_answer(text, 5).ranking == [3, 1]
    # the default box goes on past the named items (by attribute overlap, then PAS): numbers the prompt does not show
    full = sft_answer(task, SftAnswerTemplate.load("rerec/sft_answer_attributes_first.yaml"))
    assert full.endswith("\\boxed{4, 2, 5, 3, 1}")
    assert full.split("\\boxed")[0] == text.split("\\boxed")[0]  # same reasoning
    with pytest.raises(ValueError, match="box must be one of"):
        SftAnswerTemplate(**{**vars(named), "box": "top"})


def test_a_bad_box_value_in_an_answer_file_is_one_error_naming_the_file(tmp_path):
    import yaml

    from llmrec.errors import LlmrecError
    from llmrec.paths import prompts_dir

    bad = tmp_path / "answer.yaml"
    fields = yaml.safe_load((prompts_dir() / "rerec/sft_answer_named_box.yaml").read_text())
    bad.write_text(yaml.safe_dump({**fields, "box": "top"}))
    with pytest.raises(LlmrecError, match=f"^{bad}: box must be one of \\('ranking', 'named'\\), got 'top'$"):
        SftAnswerTemplate.load(bad)


def test_rerec_eval_cli_on_the_tiny_model(tiny_backbone, shared_data, tmp_path):
    import json

    from llmrec.cli.main import main

    out = tmp_path / "eval"
    rc = main(["eval", "rerec", "--model", str(tiny_backbone), "--data",
               str(shared_data / "movielens" / "recbole_ml-100k"), "--max_tasks", "4", "--max_new_tokens", "8",
               "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"] == 4 and 0 <= metrics["format_valid"] <= 1 and sum(metrics["status"].values()) == 4
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4


def test_overlap_reference_ranks_by_shared_need_attributes_hand_computed():
    from llmrec.eval.rerec_eval import reference_completions

    # need: Comedy; items 1 and 3 are Comedy, target is 3: overlap order 1, 3, 0, 2, 4 -> target at rank 2
    task = _task(3)
    texts = reference_completions([task], "overlap")
    assert texts == ["\\boxed{2, 4, 1, 3, 5}"]
    r = score_completions([task], texts)
    assert r["hr@1"] == 0.0 and r["ndcg@10"] == pytest.approx(1 / math.log2(3)) and r["format_valid"] == 1.0
    rand = reference_completions([_task(0)] * 200, "random")
    assert score_completions([_task(0)] * 200, rand)["hr@1"] == pytest.approx(1 / 5, abs=0.08)
    with pytest.raises(ValueError, match="reference must be one of"):
        reference_completions([task], "oracle")


def test_rerec_eval_cli_reference_needs_no_model(shared_data, tmp_path, capsys):
    import json

    from llmrec.cli.main import main

    data = str(shared_data / "movielens" / "recbole_ml-100k")
    out = tmp_path / "ref"
    assert main(["eval", "rerec", "--reference", "overlap", "--data", data, "--max_tasks", "50",
                 "--task_prompt", "rerec/task_attributes.yaml", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the need names the target's genres, so the target is among the best-overlapping candidates
    assert metrics["reference"] == "overlap" and metrics["format_valid"] == 1.0 and metrics["hr@1"] > 0.4
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 50
    capsys.readouterr()
    assert main(["eval", "rerec", "--reference", "random", "--adapter", str(tmp_path), "--data", data]) == 2
    assert "--adapter belongs to a model" in capsys.readouterr().err
    assert main(["eval", "rerec", "--model", str(tmp_path), "--merge_adapter", "no", "--data", data]) == 2
    assert "--merge_adapter chooses how --engine vllm serves" in capsys.readouterr().err


def _write_run(folder, tasks, completions):
    from llmrec.eval.rerec_eval import write_predictions

    folder.mkdir(parents=True)
    write_predictions(tasks, completions, folder)
    return folder


def test_rerec_compare_averages_seeds_per_task_and_pairs_tasks(tmp_path, capsys):
    import json

    from llmrec.cli.main import main
    from llmrec.eval.rerec_eval import compare_runs

    tasks = [_task(0), _task(1), _task(2)]
    a1 = _write_run(tmp_path / "a1", tasks, ["\\boxed{1}", "\\boxed{2}", "\\boxed{1, 2, 3}"])  # NDCG 1, 1, 1/2
    a2 = _write_run(tmp_path / "a2", tasks, ["\\boxed{1}", "no box", "\\boxed{3}"])  # 1, 0, 1
    b = _write_run(tmp_path / "b", tasks, ["\\boxed{2, 1}", "\\boxed{2}", "\\boxed{5}"])  # 1/log2(3), 1, 0
    r = compare_runs([a1, a2], [b])
    assert r["tasks"] == 3 and r["metric"] == "ndcg@10"
    assert r["a"]["per_run"] == pytest.approx([2.5 / 3, 2 / 3])
    assert r["a"]["std"] == pytest.approx((2.5 / 3 - 2 / 3) / math.sqrt(2))
    # per task, A is the mean of its two runs: 1, 0.5, 0.75
    diffs = [1 - 1 / math.log2(3), 0.5 - 1, 0.75 - 0]
    assert r["paired"]["mean_diff"] == pytest.approx(sum(diffs) / 3)
    assert (r["paired"]["wins"], r["paired"]["losses"], r["paired"]["ties"]) == (2, 1, 0)
    # signed ranks of |d| = 0.37, 0.5, 0.75: W- = 2; P(W <= 2) = 3/8 of the 8 sign patterns, two-sided 0.75
    assert r["paired"]["wilcoxon_p"] == pytest.approx(0.75)
    # hr@1: A's tasks 1, 0.5, 0.5 against B's 0, 1, 0
    assert compare_runs([a1, a2], [b], metric="hr@1")["paired"]["mean_diff"] == pytest.approx((1 - 0.5 + 0.5) / 3)
    # a box with a repeated number counts in the lenient figures only
    dup = _write_run(tmp_path / "dup", tasks, ["\\boxed{1, 1}", "\\boxed{2}", "\\boxed{3}"])
    assert compare_runs([dup], [b], lenient=True)["a"]["mean"] == pytest.approx(1.0)
    assert compare_runs([dup], [b])["a"]["mean"] == pytest.approx(2 / 3)

    out = tmp_path / "cmp.json"
    assert main(["eval", "rerec-compare", "--a", str(a1), str(a2), "--b", str(b), "--out", str(out)]) == 0
    assert "A - B +0.206" in capsys.readouterr().out
    assert json.loads(out.read_text())["paired"]["wins"] == 2
    other = _write_run(tmp_path / "other", [_task(0), _task(3)], ["\\boxed{1}", "\\boxed{4}"])
    assert main(["eval", "rerec-compare", "--a", str(a1), "--b", str(other)]) == 2
    assert "evaluated on other tasks" in capsys.readouterr().err
    assert main(["eval", "rerec-compare", "--a", str(tmp_path / "nothing"), "--b", str(b)]) == 2
    assert "predictions.jsonl not found" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predictions.jsonl").write_text('{"task_id": "t0", "targets": ["i0"], "candidates": ["i0"]}\n')
    assert main(["eval", "rerec-compare", "--a", str(broken), "--b", str(b)]) == 2
    assert "predictions.jsonl:1: missing completion" in capsys.readouterr().err


@pytest.mark.parametrize("name,meta", [("movielens/recbole_ml-100k", None),
                                       ("amazon/openp5_beauty", "amazon/recbole_amazon_beauty/Amazon_Beauty.item")])
def test_attributes_first_answer_copies_the_target_line_of_the_prompt(shared_data, name, meta):
    """With the attributes-first prompts, the answer's "need: [n]" is written, word for word, before the target's
    number in the candidate list, and before no candidate with other attributes: finding it is a copy."""
    import re

    from llmrec.data import load_recdata
    from llmrec.training.rerec_tasks import build_rerec_tasks

    kw = {"item_meta": str(shared_data / meta)} if meta else {}
    tasks = build_rerec_tasks(load_recdata(shared_data / name, **kw), split="train", max_users=40,
                              template="rerec/task_attributes_first.yaml")
    template = SftAnswerTemplate.load("rerec/sft_answer_attributes_first.yaml")
    matched = 0
    for task in tasks:
        prompt, answer = task["prompt"][-1]["content"], sft_answer(task, template)
        target = task["candidates"].index(task["targets"][0]) + 1
        m = re.match(r"The user asks for (.+?): \[(\d+)\]", answer)
        if m is None:  # the target has no genre/category the need names
            continue
        matched += 1
        assert int(m.group(2)) == target
        lines = [line for line in prompt.splitlines() if line.startswith(f"{m.group(1)}: [")]
        assert f"{m.group(1)}: [{target}] {task['candidate_titles'][target - 1]}" in lines
        # the need in the request uses the same words
        assert m.group(1) in prompt.split("Candidates")[0]
    assert matched >= 0.9 * len(tasks)


def test_sft_recipe_warm_start_reads_the_task_and_answer_files_of_the_config(shared_data):
    from llmrec.paths import configs_dir
    from llmrec.training.sft_recipe import parse, rerec_warm_start

    argv = ["--config", str(configs_dir() / "sft_rerec_ml100k.yaml"), "--rerec_cf_dir", "",
            "--rerec_data", str(shared_data / "movielens" / "recbole_ml-100k"), "--max_train_examples", "3"]
    first = rerec_warm_start(parse(argv, prog="llmrec train sft")[0])  # the config's attributes-first files
    parenthesised = rerec_warm_start(parse([*argv, "--rerec_task_prompt", "rerec/task_attributes.yaml",
                                            "--rerec_answer_prompt", "rerec/sft_answer.yaml"],
                                           prog="llmrec train sft")[0])
    assert len(parenthesised) == len(first) == 3
    assert "Candidates (genres/categories in parentheses)" in parenthesised[0]["prompt"][-1]["content"]
    assert "Candidates (genres/categories first)" in first[0]["prompt"][-1]["content"]
    assert " has " in parenthesised[0]["completion"][0]["content"]
    assert ": [" in first[0]["completion"][0]["content"].split(".")[0]


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "lora"])
def test_vllm_engine_answers_as_hf_generate_does(tiny_backbone, tiny_adapter_dir, tmp_path, merge):
    """`--engine vllm` (a real vLLM server; the adapter merged into the model, or served as LoRA) gives HF's greedy
    answers, and scores them."""
    import json

    from llmrec.eval.rerec_eval import evaluate_rerec, generate_hf

    tasks = [{**_task(pos), "prompt": [{"role": "user", "content": f"Rank the candidates for need {pos}: lipstick."}]}
             for pos in range(3)]
    adapter = str(tiny_adapter_dir / "tinylora")
    # no dtype given: both engines default to float32 (vLLM's own CPU default is bfloat16 on AVX512-BF16 CPUs)
    got = evaluate_rerec(tiny_backbone, tasks, adapter=adapter, engine="vllm", max_new_tokens=12, out=tmp_path,
                         max_model_len=1024, merge=merge)
    want = generate_hf(tiny_backbone, tasks, adapter=adapter, max_new_tokens=12, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows] == want and any(want)
    assert got["engine"] == "vllm" and got["dtype"] == "float32" and got["tasks"] == 3
    assert {k: v for k, v in got.items() if k in ("hr@1", "ndcg@10", "format_valid")} == {
        k: v for k, v in score_completions(tasks, want).items() if k in ("hr@1", "ndcg@10", "format_valid")}


_STOP_MID_EVAL = """
import sys
from llmrec.eval.rerec_eval import generate_vllm
tasks = [{"prompt": [{"role": "user", "content": f"Rank the candidates for need {i}: lipstick, {i * 7} more."}]}
         for i in range(48)]
generate_vllm(sys.argv[1], tasks, max_new_tokens=800, concurrency=4, max_model_len=1024,
              server_args=["--dtype", "float32"])
print("FINISHED")
"""


def test_vllm_engine_stops_mid_evaluation_on_sigterm(tiny_backbone, tmp_path):
    """`kill PID` during `--engine vllm` ends the evaluation and its server without answering the queued tasks."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    def served(log):
        return log.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200') if log else 0

    proc = subprocess.Popen([sys.executable, "-c", _STOP_MID_EVAL, str(tiny_backbone)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    log, vllm = None, []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None and served(log) == 0:
            log = next(tmp_path.glob("llmrec-vllm-*.log"), None)
            time.sleep(0.2)
        assert served(log) > 0, "the vLLM server never answered"
        vllm = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, alive = psutil.wait_procs(vllm, timeout=30)
        for p in alive:  # not left behind for the next tests
            p.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "FINISHED" not in out
    # The queued tasks are never asked. (Whether the requests in flight are waited for, as `with ThreadPoolExecutor`
    # did, this tiny model cannot show: its answers take too little time.)
    assert served(log) < 48
    assert vllm and not alive, f"vLLM processes outlived the evaluation: {alive}"


def test_evaluation_precision_is_checked_before_any_model_loads():
    from llmrec.errors import LlmrecError
    from llmrec.eval.rerec_eval import evaluate_rerec

    with pytest.raises(LlmrecError, match="dtype must be one of"):
        evaluate_rerec("/nonexistent/model", [_task(0)], engine="hf", dtype="float16")
