"""ReRec comparison report (table over seeds, paired tests, chart) and the experiment script's stage plan."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from llmrec.eval.rerec_eval import write_predictions
from llmrec.eval.rerec_report import write_report

ROOT = Path(__file__).resolve().parents[1]


def _tasks(n=4, width=5):
    return [{"task_id": f"u{i}", "targets": [f"i{i % width}"], "candidates": [f"i{j}" for j in range(width)]}
            for i in range(n)]


def _run(folder, completions):
    folder.mkdir(parents=True)
    write_predictions(_tasks(), completions, folder)
    return folder


def test_report_table_over_seeds_and_paired_tests(tmp_path):
    # targets are candidates 1, 2, 3, 4 of tasks u0..u3
    s0 = _run(tmp_path / "full_s0", ["\\boxed{1}", "\\boxed{2}", "\\boxed{1, 3}", "no box"])  # HR@1 2/4
    s1 = _run(tmp_path / "full_s1", ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}"])  # HR@1 4/4
    base = _run(tmp_path / "base", ["\\boxed{2}", "\\boxed{1, 2}", "\\boxed{3}", "\\boxed{5}"])  # HR@1 1/4
    r = write_report({"base": [base], "full": [s0, s1]}, [("full", "base")], tmp_path / "report")
    full = r["summary"]["full"]
    assert full["hr@1"]["per_run"] == [0.5, 1.0]
    assert full["hr@1"]["mean"] == pytest.approx(0.75) and full["hr@1"]["std"] == pytest.approx(0.5 / math.sqrt(2))
    assert full["format_valid"]["per_run"] == [0.75, 1.0]
    assert r["summary"]["base"]["ndcg@10"]["mean"] == pytest.approx((0 + 1 / math.log2(3) + 1 + 0) / 4)
    ndcg = next(p for p in r["paired"] if p["metric"] == "ndcg@10")
    # per task, full (mean of its seeds) minus base: 1 - 0, 1 - 1/log2(3), (1/log2(3) + 1)/2 - 1, 1/2 - 0
    diffs = [1, 1 - 1 / math.log2(3), (1 / math.log2(3) + 1) / 2 - 1, 0.5]
    assert ndcg["mean_diff"] == pytest.approx(sum(diffs) / 4)
    assert (ndcg["wins"], ndcg["losses"], ndcg["ties"]) == (3, 1, 0)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| full | 2 | 0.750 ± 0.354 |" in md and "| full | base | hr@1 | +0.500 |" in md
    assert json.loads((tmp_path / "report" / "report.json").read_text())["summary"]["base"]["runs"] == [str(base)]
    assert (tmp_path / "report" / "report.png").stat().st_size > 10_000


def test_report_lenient_metric_reads_boxes_the_strict_one_rejects(tmp_path):
    base = _run(tmp_path / "base", ["\\boxed{2}", "\\boxed{1, 2}", "\\boxed{3}", "\\boxed{5}"])  # HR@1 1/4
    # right first choices, but repeated numbers make u0 and u1 invalid answers: strict HR@1 1/4, lenient 3/4
    dup = _run(tmp_path / "dup", ["\\boxed{1, 1}", "\\boxed{2, 2}", "\\boxed{3}", "\\boxed{5}"])
    r = write_report({"base": [base], "dup": [dup]}, [("dup", "base")], tmp_path / "report",
                     metrics=("hr@1", "lenient/hr@1"))
    by_metric = {p["metric"]: p for p in r["paired"]}
    assert by_metric["hr@1"]["mean_diff"] == pytest.approx(0.0)
    assert by_metric["lenient/hr@1"]["mean_diff"] == pytest.approx(0.5)
    assert (by_metric["lenient/hr@1"]["wins"], by_metric["lenient/hr@1"]["ties"]) == (2, 2)
    assert "| dup | base | lenient/hr@1 | +0.500 |" in (tmp_path / "report" / "report.md").read_text()


def _grpo_run(folder, ndcg, valid):
    """A GRPO output folder whose metrics.jsonl logs these per-step rollout figures, then TRL's summary line."""
    folder.mkdir(parents=True)
    rows = [{"step": i + 1, "loss": 0.1, "rewards/ndcg/mean": n, "rerec/format_valid": v}
            for i, (n, v) in enumerate(zip(ndcg, valid))]
    rows.append({"step": len(ndcg), "train_runtime": 12.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_report_training_curves_average_seeds_per_step_and_quarters(tmp_path):
    base = _run(tmp_path / "base", ["\\boxed{2}", "\\boxed{1, 2}", "\\boxed{3}", "\\boxed{5}"])
    s0 = _grpo_run(tmp_path / "g0", [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0], [0.5] * 8)
    s1 = _grpo_run(tmp_path / "g1", [0.2, 0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])  # 6 steps
    from llmrec.eval.rerec_report import training_curves, training_table

    curves = training_curves([s0, s1])
    assert curves["rewards/ndcg/mean"].shape == (2, 8)  # the summary line (no rollout figures) is not a step
    assert curves["rewards/ndcg/mean"][0, 5] == pytest.approx(1.0)
    assert math.isnan(curves["rewards/ndcg/mean"][1, 6])  # seed 1 stopped at step 6
    # quarters of 8 steps: steps 1-2 and 7-8; seed 1 has no steps 7-8, so the last quarter is seed 0's
    table = training_table({"arm": curves})
    assert "| arm | 8 | 0.150 / 1.000 | 0.500 / 0.500 |" in table
    write_report({"base": [base]}, [], tmp_path / "report", training={"arm": [s0, s1]})
    md = (tmp_path / "report" / "report.md").read_text()
    assert "GRPO rollouts on the training tasks" in md and "| arm | 8 | 0.150 / 1.000 |" in md
    assert (tmp_path / "report" / "training.png").stat().st_size > 10_000
    write_report({"base": [base]}, [], tmp_path / "plain")  # no training folders: no section, no chart
    assert not (tmp_path / "plain" / "training.png").exists()


def _script():
    spec = importlib.util.spec_from_file_location("rerec_experiment", ROOT / "scripts" / "rerec_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_experiment_plan_skips_finished_stages_and_passes_the_protocol(tmp_path, capsys):
    script = _script()
    out = tmp_path / "exp"
    argv = ["--sft_config", str(ROOT / "configs/sft_rerec_ml100k.yaml"),
            "--grpo_config", str(ROOT / "configs/grpo-rerec_ml100k.yaml"), "--out", str(out), "--seeds", "0", "3",
            "--sft_steps", "40", "--grpo_steps", "12", "--grpo_tasks", "16", "--learning_rate", "1e-4"]
    stages = {s["name"]: s for s in script.plan(script.parse_args(argv))}
    assert list(stages) == ["eval_random", "eval_overlap", "sft", "eval_sft", "grpo_full_s0", "eval_grpo_full_s0",
                            "grpo_ndcg_s0", "eval_grpo_ndcg_s0", "grpo_full_s3", "eval_grpo_full_s3", "grpo_ndcg_s3",
                            "eval_grpo_ndcg_s3"]
    sft = stages["sft"]["cmd"]
    assert sft[sft.index("--max_steps") + 1] == "40" and sft[sft.index("--output_dir") + 1] == str(out / "sft")
    ndcg = stages["grpo_ndcg_s3"]["cmd"]
    for flag, value in (("--seed", "3"), ("--reward", "ndcg"), ("--reasoning_aware", "false"),
                        ("--curriculum", "false"), ("--init_adapter", str(out / "sft")), ("--max_train_tasks", "16"),
                        ("--learning_rate", "0.0001")):
        assert ndcg[ndcg.index(flag) + 1] == value
    assert "--reward" not in stages["grpo_full_s3"]["cmd"]
    assert "--task_prompt" not in stages["grpo_full_s3"]["cmd"]  # the config's own
    # checkpoints: half the steps by default, every --save_every steps when given
    assert sft[sft.index("--save_steps") + 1] == "20" and ndcg[ndcg.index("--save_steps") + 1] == "6"
    often = {s["name"]: s["cmd"] for s in script.plan(script.parse_args([*argv, "--save_every", "4"]))}
    for name in ("sft", "grpo_full_s0", "grpo_ndcg_s3"):
        assert often[name][often[name].index("--save_steps") + 1] == "4" and often[name].count("--save_steps") == 1
    # a prompt override reaches every stage: SFT's task and answer files, GRPO's and the evaluations' task file
    other = {s["name"]: s["cmd"] for s in script.plan(script.parse_args(
        [*argv, "--task_prompt", "rerec/task_attributes.yaml", "--answer_prompt", "rerec/sft_answer.yaml"]))}
    task, answer = "rerec/task_attributes.yaml", "rerec/sft_answer.yaml"
    for name, flag, value in (("sft", "--rerec_task_prompt", task), ("sft", "--rerec_answer_prompt", answer),
                              ("grpo_ndcg_s0", "--task_prompt", task), ("eval_overlap", "--task_prompt", task),
                              ("eval_sft", "--task_prompt", task)):
        assert other[name][other[name].index(flag) + 1] == value, (name, flag)
    assert other["eval_sft"].count("--task_prompt") == 1
    # every evaluation sees the tasks GRPO trained on the same data, prompt and CF run
    for name in ("eval_random", "eval_sft", "eval_grpo_ndcg_s3"):
        cmd = stages[name]["cmd"]
        assert cmd[cmd.index("--task_prompt") + 1] == "rerec/task_attributes_first.yaml"
        assert cmd[cmd.index("--data") + 1] == "../shared/data/movielens/recbole_ml-100k"
    assert stages["eval_sft"]["cmd"][stages["eval_sft"]["cmd"].index("--engine") + 1] == "vllm"
    # a second evaluation folder: the same policies on more users, the first evaluations kept
    more = {s["name"]: s for s in script.plan(script.parse_args([*argv, "--eval_dir", "eval200", "--eval_tasks", "200"]))}
    cmd = more["eval200_grpo_ndcg_s3"]["cmd"]
    assert cmd[cmd.index("--out") + 1] == str(out / "eval200" / "grpo_ndcg_s3") and "eval_sft" not in more
    assert cmd[cmd.index("--max_tasks") + 1] == "200" and more["grpo_ndcg_s3"]["cmd"] == stages["grpo_ndcg_s3"]["cmd"]
    # a finished stage is skipped (its output exists); a dry run runs nothing
    Path(stages["sft"]["done"]).parent.mkdir(parents=True)
    Path(stages["sft"]["done"]).write_text("")
    assert script.main([*argv, "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "[3/12] sft: done" in printed and "[4/12] eval_sft: to run" in printed
    assert not (out / "logs").exists()


def test_experiment_ablation_arms_take_one_module_out_and_are_compared_with_both_baselines(tmp_path, monkeypatch):
    script = _script()
    argv = ["--sft_config", str(ROOT / "configs/sft_rerec_beauty.yaml"),
            "--grpo_config", str(ROOT / "configs/grpo-rerec_beauty.yaml"), "--out", str(tmp_path), "--seeds", "1",
            "--arms", "full", "ndcg", "no_curriculum", "no_alignment"]
    args = script.parse_args(argv)
    stages = {s["name"]: s["cmd"] for s in script.plan(args)}
    assert [n for n in stages if n.startswith("grpo_")] == [
        "grpo_full_s1", "grpo_ndcg_s1", "grpo_no_curriculum_s1", "grpo_no_alignment_s1"]

    def flags(cmd):
        start = cmd.index("--init_adapter")
        return {cmd[i]: cmd[i + 1] for i in range(start, len(cmd) - 1) if cmd[i].startswith("--")}

    no_curr, no_align = flags(stages["grpo_no_curriculum_s1"]), flags(stages["grpo_no_alignment_s1"])
    assert no_curr["--curriculum"] == "false" and "--reasoning_aware" not in no_curr and "--reward" not in no_curr
    assert (no_align["--w_qas"], no_align["--w_pas"]) == ("0", "0") and "--curriculum" not in no_align
    assert stages["eval_grpo_no_alignment_s1"][-1] == str(tmp_path / "eval" / "grpo_no_alignment_s1")
    assert script.parse_args([*argv, "full"]).arms == ["full", "ndcg", "no_curriculum", "no_alignment"]
    with pytest.raises(SystemExit):  # an unknown arm is refused by argparse
        script.parse_args([*argv, "no_such_arm"])

    seen = {}
    monkeypatch.setattr("llmrec.eval.rerec_report.write_report",
                        lambda policies, comparisons, out, **kw: seen.update(policies=policies, comparisons=comparisons, out=out))
    assert script.report(args) == tmp_path / "report.md"
    assert script.report(script.parse_args([*argv, "--report", str(tmp_path / "abl")])) == tmp_path / "abl" / "report.md"
    assert seen["out"] == tmp_path / "abl"  # the main report in OUT is left as it was
    assert list(seen["policies"])[3:] == ["GRPO, NDCG reward", "GRPO, full ReRec", "GRPO, full without curriculum",
                                          "GRPO, full without QAS/PAS"]
    assert seen["policies"]["GRPO, full without curriculum"] == [tmp_path / "eval" / "grpo_no_curriculum_s1"]
    full, ndcg = "GRPO, full ReRec", "GRPO, NDCG reward"
    assert seen["comparisons"] == [
        (full, ndcg), (full, "SFT warm start"), (ndcg, "SFT warm start"),
        (full, "GRPO, full without curriculum"), ("GRPO, full without curriculum", ndcg),
        (full, "GRPO, full without QAS/PAS"), ("GRPO, full without QAS/PAS", ndcg)]
    # a variant run without full ReRec is compared with the warm start
    top1 = script.parse_args([*argv[:argv.index("--arms")], "--arms", "top1_alignment"])
    assert flags({s["name"]: s["cmd"] for s in script.plan(top1)}["grpo_top1_alignment_s1"])["--alignment_k"] == "1"
    script.report(top1)
    assert seen["policies"]["GRPO, full, QAS/PAS of top-1"] == [tmp_path / "eval" / "grpo_top1_alignment_s1"]
    assert seen["comparisons"] == [("GRPO, full, QAS/PAS of top-1", "SFT warm start")]


def test_experiment_stage_runs_under_the_lock_and_reports_failures(tmp_path):
    import sys

    script = _script()
    done = tmp_path / "stage_out" / "metrics.json"
    make = f"import pathlib; p = pathlib.Path({str(done)!r}); p.parent.mkdir(); p.write_text('{{}}')"
    stage = {"name": "ok", "cmd": [sys.executable, "-c", make], "done": done}
    assert script.run_stage(stage, tmp_path, str(tmp_path / "heavy.lock")) >= 0
    assert json.loads((tmp_path / "stages.jsonl").read_text())["stage"] == "ok"
    assert script.run_stage(stage, tmp_path, str(tmp_path / "heavy.lock")) is None  # done meanwhile: not rerun
    bad = {"name": "bad", "cmd": [sys.executable, "-c", "print('no adapter here'); raise SystemExit(3)"],
           "done": tmp_path / "never"}
    with pytest.raises(SystemExit, match=r"stage bad failed \(exit 3.*\n.*no adapter here"):
        script.run_stage(bad, tmp_path, None)


def test_bad_segment_shares_of_correct_answers_per_rule():
    spec = importlib.util.spec_from_file_location("rerec_bad_segments", ROOT / "scripts" / "rerec_bad_segments.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cands = ["a", "b", "c", "d", "e"]
    tasks = {"t1": {"candidates": cands, "candidate_titles": ["i1", "i2", "i3", "i4", "i5"], "targets": ["a"]}}
    tail = "Candidates 3, 4 come next. "
    right = "Pick [1]. " + tail + "\\boxed{1, 3, 4}"
    wrong = "Pick [2]. \\boxed{2, 1}"  # a non-target first: not counted
    n, shares = script.bad_shares([{"task_id": "t1", "completion": right}, {"task_id": "t1", "completion": wrong}],
                                  tasks)
    assert n == 1
    assert shares == {"any-non-target": pytest.approx(len(tail) / len(right)), "above-target": 0.0}


def test_reward_spread_of_target_first_answers_per_alignment_k():
    import math
    import random

    spec = importlib.util.spec_from_file_location("rerec_reward_spread", ROOT / "scripts" / "rerec_reward_spread.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    task = {"candidates": ["a", "b", "c", "d", "e"], "targets": ["a"], "target_attributes": ["x", "y", "z"],
            "candidate_attributes": [["x", "y", "z"], ["x", "y"], ["x"], [], []],
            "candidate_pas": [1.0, 0.9, 0.6, 0.5, 0.4]}
    sd, drop = script.spread(task, 1, random.Random(0), k=3)
    assert sd == 0.0  # every answer puts the target first: same recommended item, same reward
    # near miss "b" first, target second: NDCG 1 -> 1/log2(3), QAS 1 -> 2/3, PAS 1 -> 0.9
    assert drop == pytest.approx((1 - 1 / math.log2(3)) + 0.5 * (1 / 3) + 0.5 * 0.1)
    sd3, _ = script.spread(task, None, random.Random(0), k=3)
    assert sd3 > 0.01  # the discounted top-3 mean reads the tail
