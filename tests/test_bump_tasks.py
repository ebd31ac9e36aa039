"""BUMP tasks on real Musical Instruments reviews, profile export to the user store, rating evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec.errors import LlmrecError
from llmrec.eval.profile_rating import (
    bump_eval_report,
    condition_errors,
    constant_references,
    format_report_table,
    generate_profiles,
    generate_profiles_with_model,
    load_causal_lm,
    rater_sft_examples,
    rating_mae,
    shuffle_profiles,
    star_logprobs,
)
from llmrec.serving.user_state import open_user_store
from llmrec.training.bump_tasks import (
    build_bump_tasks,
    build_rating_questions,
    bump_dataset,
    split_users,
    user_reviews,
)
from llmrec.training.profile_export import export_profiles


@pytest.fixture(scope="module")
def mi(shared_data):
    from llmrec.data import load_recdata

    return load_recdata(shared_data / "amazon" / "musical_instruments_5core_2014")


def _prompt_text(task) -> str:
    return "\n".join(m["content"] for m in task["prompt"])


def test_tasks_columns_heldout_hidden_and_time_order(mi):
    tasks = build_bump_tasks(mi)
    # 5-core: every user has >= 5 = 3 held out + 2 history reviews, except 5 users who posted the same
    # text (or an edit of it) for several items: 17 repeated reviews of 10,261 are dropped so that a
    # held-out copy cannot leak into the prompt.
    assert len(tasks) == 1424
    assert sum(len(v) for v in user_reviews(mi).values()) == 10_244
    assert sum(len(v) for v in user_reviews(mi, dedupe_text=False).values()) == 10_261
    reviews = user_reviews(mi)
    for t in tasks:
        assert set(t) == {"prompt", "task_id", "user_id", "heldout"}
        assert t["task_id"] == f"bump-{t['user_id']}"
        assert [m["role"] for m in t["prompt"]] == ["system", "user"]
        assert len(t["heldout"]) == 3 and all(isinstance(h, str) and h for h in t["heldout"])
        prompt = _prompt_text(t)
        revs = reviews[t["user_id"]]
        for h, r in zip(t["heldout"], revs[-3:]):
            assert h not in prompt
            # The held-out review body (its first words) never reaches the prompt, unless the user wrote
            # the same words in an earlier review too.
            head = " ".join(r["text"].split()[:12])
            if len(head) > 30 and not any(head in " ".join(e["text"].split()) for e in revs[:-3]):
                assert head not in prompt
        # Held-out interactions are the latest ones.
        assert max(r["timestamp"] for r in revs[:-3]) <= min(r["timestamp"] for r in revs[-3:])
        assert prompt.count("\n- ") == min(8, len(revs) - 3)


def test_tasks_deterministic_split_and_options(mi):
    a = build_bump_tasks(mi, split="train", seed=3)
    assert a == build_bump_tasks(mi, split="train", seed=3)
    test = build_bump_tasks(mi, split="test", seed=3)
    train_ids, test_ids = {t["user_id"] for t in a}, {t["user_id"] for t in test}
    assert not train_ids & test_ids and len(train_ids | test_ids) == 1424
    assert 0.15 < len(test_ids) / 1424 < 0.25
    assert (sorted(train_ids), sorted(test_ids)) == split_users(train_ids | test_ids, 0.2, seed=3)
    assert test_ids != {t["user_id"] for t in build_bump_tasks(mi, split="test", seed=4)}
    # A user's side depends only on its id and the seed: filtering other users away changes nothing.
    small = build_bump_tasks(mi, split="test", seed=3, min_interactions=10, n_history=4, max_users=5)
    assert len(small) == 5 and {t["user_id"] for t in small} <= test_ids
    assert all(_prompt_text(t).count("\n- ") == 4 for t in small)
    ds = bump_dataset(small)
    assert ds.column_names == ["prompt", "task_id", "user_id", "heldout"] and ds[0]["heldout"] == small[0]["heldout"]
    with pytest.raises(LlmrecError, match="split"):
        build_bump_tasks(mi, split="valid")
    with pytest.raises(LlmrecError, match="no user"):
        build_bump_tasks(mi, min_interactions=10_000)


def test_rating_questions_match_test_users(mi):
    tasks = build_bump_tasks(mi, split="test", max_users=20)
    qs = build_rating_questions(mi, split="test", max_users=20)
    assert {q["user_id"] for q in qs} == {t["user_id"] for t in tasks}
    assert all(q["rating"] in (1, 2, 3, 4, 5) for q in qs)
    held = {t["user_id"]: t["heldout"] for t in tasks}
    for q in qs:
        head = " ".join(q["review"].split()[:10])
        assert any(head in h for h in held[q["user_id"]])  # the question is one of the user's held-out reviews


@pytest.mark.parametrize("name", ["store", "store.sqlite"])
def test_export_profiles_round_trip(tmp_path, name):
    path = tmp_path / name
    open_user_store(path).update("u1", adapter="keepme", history=["i1"])
    n = export_profiles({"u1": " likes strings ", "u2": "records vocals 🎤", "u3": None, "u4": "  "}, path,
                        meta={"source": "bump-test"})
    assert n == 2
    store = open_user_store(path, create=False)
    assert store.user_ids() == ["u1", "u2"]
    s1 = store.get("u1")
    assert (s1.profile, s1.adapter, s1.history, s1.meta) == ("likes strings", "keepme", ["i1"], {"source": "bump-test"})
    assert store.get("u2").profile == "records vocals 🎤"


def test_shuffle_profiles_is_a_derangement():
    profiles = {f"u{i}": f"p{i}" for i in range(7)}
    sh = shuffle_profiles(profiles, seed=1)
    assert sh == shuffle_profiles(profiles, seed=1) and sh != shuffle_profiles(profiles, seed=2)
    assert set(sh) == set(profiles) and sorted(sh.values()) == sorted(profiles.values())
    assert all(sh[u] != profiles[u] for u in profiles)
    with pytest.raises(LlmrecError):
        shuffle_profiles({"u": "p"})


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    return load_causal_lm(tiny_backbone, device="cpu")


def test_rating_mae_on_tiny_backbone(tiny, mi):
    qs = build_rating_questions(mi, split="test", max_users=2)[:5]
    assert len(qs) == 5
    profiles = {qs[0]["user_id"]: "Plays guitar, cares about price.", qs[-1]["user_id"]: None}
    res = rating_mae(tiny, qs, profiles, batch_size=2, progress=False, return_predictions=True)
    assert res["n"] == 5
    for k in ("mae", "rmse", "mae_expected", "rmse_expected", "star_mass"):
        assert np.isfinite(res[k]) and res[k] >= 0
    preds = res["predictions"]
    assert all(p["pred"] in (1, 2, 3, 4, 5) and 1 <= p["expected"] <= 5 for p in preds)
    gold = np.array([q["rating"] for q in qs])
    assert res["mae"] == pytest.approx(np.abs(np.array([p["pred"] for p in preds]) - gold).mean())
    assert res["rmse"] >= res["mae"] and 0 < res["star_mass"] <= 1
    # Left padding is handled (positions restart per row): batching does not change the scores.
    lp1 = star_logprobs(tiny, qs, profiles, batch_size=1, progress=False)
    lp5 = star_logprobs(tiny, qs, profiles, batch_size=5, progress=False)
    np.testing.assert_allclose(lp1, lp5, atol=1e-4)
    # The profile reaches the prompt: scores change for the user that has one.
    lp_none = star_logprobs(tiny, qs, {}, batch_size=5, progress=False)
    with_profile = np.array([q["user_id"] == qs[0]["user_id"] for q in qs])
    assert not np.allclose(lp5[with_profile], lp_none[with_profile])
    np.testing.assert_allclose(lp5[~with_profile], lp_none[~with_profile], atol=1e-4)


def test_generate_profiles_and_report_on_tiny_backbone(tiny, tiny_backbone, tiny_adapter_dir, mi):
    tasks = build_bump_tasks(mi, split="test", max_users=3, n_history=3)
    qs = build_rating_questions(mi, split="test", max_users=3, n_history=3)
    p1 = generate_profiles(tiny, tasks, max_new_tokens=6, batch_size=1, progress=False)
    p3 = generate_profiles(tiny, tasks, max_new_tokens=6, batch_size=3, progress=False)
    assert set(p1) == {t["user_id"] for t in tasks} and all(isinstance(v, str) for v in p1.values())
    assert p1 == p3  # greedy and left padding: batching changes nothing
    # With a model in training mode (a trainer's policy): same profiles, and its mode and padding side come back.
    model, tok = tiny
    model.train()
    tok.padding_side = "right"
    assert generate_profiles_with_model(model, tok, tasks, max_new_tokens=6, batch_size=3, progress=False) == p1
    assert model.training and tok.padding_side == "right"
    model.eval()
    adapter = tiny_adapter_dir / "tinylora"
    report = bump_eval_report(tiny_backbone, tasks, qs, adapter_path=adapter, untrained_profiles=p1,
                              max_new_tokens=6, batch_size=3, progress=False)
    assert list(report["conditions"]) == ["trained_profile", "no_profile", "untrained_profile", "other_user_profile"]
    assert report["profiles"]["trained"] == generate_profiles(tiny_backbone, tasks, adapter, max_new_tokens=6,
                                                              progress=False)
    # The random tiny model writes only blank lines, i.e. empty profiles: hand-written ones for the table.
    written = {t["user_id"]: f"Customer {i} plays guitar and cares about price." for i, t in enumerate(tasks)}
    report = bump_eval_report(tiny, tasks, qs, trained_profiles=written, untrained_profiles=p1, batch_size=3,
                              progress=False)
    n_untrained = sum(bool(p1[q["user_id"]].strip()) for q in qs)
    expect = {"trained_profile": len(qs), "no_profile": 0, "untrained_profile": n_untrained,
              "other_user_profile": len(qs)}
    for name, m in report["conditions"].items():
        assert m["n"] == len(qs) and np.isfinite(m["mae"]) and m["n_with_profile"] == expect[name]
    assert report["conditions"]["trained_profile"] != report["conditions"]["other_user_profile"]
    assert "| no_profile |" in format_report_table(report)
    with pytest.raises(LlmrecError, match="adapter_path"):
        bump_eval_report(tiny, tasks, qs)
    with pytest.raises(LlmrecError, match="rater adapter folder .*nowhere not found"):
        bump_eval_report(tiny, tasks, qs, trained_profiles=written, rating_adapter_path=tiny_adapter_dir / "nowhere")


def test_eval_bump_cli_writes_the_four_condition_report(tiny, tiny_backbone, tiny_adapter_dir, shared_data, mi,
                                                        tmp_path):
    import json

    from llmrec.cli.main import main

    out = tmp_path / "eval_bump"
    argv = ["eval", "bump", "--model", str(tiny_backbone), "--adapter", str(tiny_adapter_dir / "tinylora"),
            "--data", str(shared_data / "amazon" / "musical_instruments_5core_2014"), "--max_users", "3",
            "--n_history", "3", "--batch_size", "3", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    qs = build_rating_questions(mi, split="test", max_users=3, n_history=3)
    assert report["n_users"] == 3 and report["n_questions"] == len(qs)
    assert list(report["conditions"]) == ["trained_profile", "no_profile", "untrained_profile", "other_user_profile"]
    direct = rating_mae(tiny, qs, {q["user_id"]: None for q in qs}, batch_size=3, progress=False)
    for key in ("mae", "rmse", "mae_expected"):
        assert report["conditions"]["no_profile"][key] == pytest.approx(direct[key], abs=1e-6)
    assert "| trained_profile |" in (out / "report.md").read_text()


def test_rater_sft_examples_deal_each_question_once_to_the_sources_in_equal_shares(mi):
    qs = build_rating_questions(mi, split="train", max_users=10)
    users = sorted({q["user_id"] for q in qs})
    trained = {u: f"Writer A on {u}." for u in users}
    untrained = {u: f"Writer B on {u}." for u in users}
    ex = rater_sft_examples(qs, {"trained": trained, "untrained": untrained, "none": {}}, seed=3)
    assert sorted(e["id"] for e in ex) == sorted(q["id"] for q in qs)
    counts = [sum(e["source"] == s for e in ex) for s in ("trained", "untrained", "none")]
    assert max(counts) - min(counts) <= 1 and sum(counts) == len(qs)
    gold = {q["id"]: q for q in qs}
    for e in ex:
        q = gold[e["id"]]
        text = e["prompt"][-1]["content"]
        assert e["completion"] == [{"role": "assistant", "content": str(q["rating"])}]
        assert e["prompt"][0]["role"] == "system" and q["review"].split()[0] in text
        assert (f"Writer A on {q['user_id']}." in text) == (e["source"] == "trained")
        assert (f"Writer B on {q['user_id']}." in text) == (e["source"] == "untrained")
        assert ("About the customer" in text) == (e["source"] != "none")
    # Seeded: same seed same deal, another seed another.
    assert ex == rater_sft_examples(qs, {"trained": trained, "untrained": untrained, "none": {}}, seed=3)
    other = rater_sft_examples(qs, {"trained": trained, "untrained": untrained, "none": {}}, seed=4)
    assert [e["source"] for e in other] != [e["source"] for e in ex] or [e["id"] for e in other] != [
        e["id"] for e in ex]
    with pytest.raises(LlmrecError, match="profile source"):
        rater_sft_examples(qs, {})


def test_condition_errors_pairs_the_expected_star_errors_per_question():
    def preds(expected, gold=(5, 4, 1)):
        return {"predictions": [{"expected": e, "gold": g} for e, g in zip(expected, gold)]}

    report = {"conditions": {"trained_profile": preds([4.5, 4.0, 2.0]), "no_profile": preds([4.0, 3.0, 2.0]),
                             "other_user_profile": preds([4.5, 4.0, 2.0])}}
    paired = condition_errors(report)
    # errors trained: .5, 0, 1; none: 1, 1, 1 -> differences -.5, -1, 0.
    assert paired["no_profile"]["mean_diff"] == pytest.approx(-0.5)
    assert (paired["no_profile"]["wins"], paired["no_profile"]["losses"], paired["no_profile"]["ties"]) == (0, 2, 1)
    assert paired["other_user_profile"]["mean_diff"] == 0 and paired["other_user_profile"]["ties"] == 3
    assert set(paired) == {"no_profile", "other_user_profile"}
    with pytest.raises(LlmrecError, match="per-question predictions"):
        condition_errors({"conditions": {"trained_profile": {"mae": 1.0}}})


def test_bump_rater_data_then_sft_then_eval_with_the_rater(tiny, tiny_backbone, tiny_adapter_dir, shared_data, mi,
                                                            tmp_path):
    """`llmrec data bump-rating` -> `llmrec train sft` -> `llmrec eval bump --rater_adapter`, tiny model."""
    import json

    from llmrec.cli.main import main
    from llmrec.paths import configs_dir
    from llmrec.training.sft import read_prompt_completion_jsonl

    data = str(shared_data / "amazon" / "musical_instruments_5core_2014")
    adapter = str(tiny_adapter_dir / "tinylora")
    jsonl = tmp_path / "rater" / "train.jsonl"
    assert main(["data", "bump-rating", "--model", str(tiny_backbone), "--adapter", adapter, "--data", data,
                 "--max_users", "4", "--n_history", "3", "--batch_size", "4", "--out", str(jsonl)]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    train_qs = build_rating_questions(mi, split="train", max_users=4, n_history=3)
    assert len(rows) == len(train_qs) and {r["source"] for r in rows} == {"trained", "untrained", "none"}
    # Training-side users only: none of them is evaluated.
    test_users = {q["user_id"] for q in build_rating_questions(mi, split="test", max_users=3, n_history=3)}
    assert not test_users & {q["user_id"] for q in train_qs}
    assert len(read_prompt_completion_jsonl(jsonl)) == len(rows)
    profiles = json.loads((jsonl.parent / "profiles.json").read_text())
    assert set(profiles["trained"]) == {q["user_id"] for q in train_qs}

    rater = tmp_path / "rater_sft"
    assert main(["train", "sft", "--config", str(configs_dir() / "sft_bump_rater_mi.yaml"), "--train_file",
                 str(jsonl), "--model_name_or_path", str(tiny_backbone), "--output_dir", str(rater),
                 "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "0.01",
                 "--lora_target_modules", "q_proj", "v_proj"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "bump", "--model", str(tiny_backbone), "--adapter", adapter, "--data", data,
                 "--max_users", "3", "--n_history", "3", "--batch_size", "3", "--rater_adapter", str(rater),
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["rater"]["adapter"] == str(rater)
    qs = build_rating_questions(mi, split="test", max_users=3, n_history=3)
    tuned = rating_mae(load_causal_lm(tiny_backbone, rater, device="cpu"), qs, {}, batch_size=3, progress=False)
    untuned = rating_mae(tiny, qs, {}, batch_size=3, progress=False)
    # The rater's adapter scores the table, not the base model.
    assert report["conditions"]["no_profile"]["mae_expected"] == pytest.approx(tuned["mae_expected"], abs=1e-6)
    assert tuned["mae_expected"] != pytest.approx(untuned["mae_expected"], abs=1e-6)
    assert set(report["paired"]) == {"no_profile", "untrained_profile", "other_user_profile"}
    assert "| vs | mean diff |" in (out / "report.md").read_text()
    all_train = build_rating_questions(mi, split="train", n_history=3)
    assert report["references"] == constant_references(all_train, qs)


def test_constant_references_hand_computed():
    train = [{"rating": r} for r in (5, 5, 4, 1)]  # mode 5, mean 3.75
    test = [{"rating": r} for r in (5, 3)]
    ref = constant_references(train, test)
    assert ref["constant_mode"]["value"] == 5 and ref["constant_mode"]["mae"] == pytest.approx(1.0)
    assert ref["constant_mode"]["rmse"] == pytest.approx(np.sqrt(2.0))
    assert ref["constant_mean"]["value"] == pytest.approx(3.75)
    assert ref["constant_mean"]["mae"] == pytest.approx((1.25 + 0.75) / 2) and ref["constant_mean"]["n_train"] == 4
    report = {"conditions": {}, "references": ref}
    assert "| constant_mode (5.00, from 4 training-side answers) | 1.000 |" in format_report_table(report)
    with pytest.raises(LlmrecError, match="constant references"):
        constant_references([], test)
