"""Carbon-aware re-ranking (llmrec.carbon.rerank) and its lambda frontier (llmrec.carbon.frontier)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmrec.carbon.frontier import pareto_front, reductions, sweep
from llmrec.carbon.rerank import carbon_penalty, normalize_relevance, read_pcf, rerank, rerank_cf, rerank_loop
from llmrec.errors import DataError, LlmrecError

# 2 users x 4 items. PCFs 1000/100/10/1 kg -> log10 3/2/1/0 -> penalty 1, 2/3, 1/3, 0.
SCORES = np.array([[4.0, 3.5, 1.0, 0.0],    # rel 1, 0.875, 0.25, 0
                   [4.0, 1.0, 2.0, 3.0]])   # item 3 seen; unseen 4/1/2 -> rel 1, 0, 1/3
SEEN = np.array([[False, False, False, False], [False, False, False, True]])
PCF = np.array([1000.0, 100.0, 10.0, 1.0])


@pytest.mark.parametrize("lam, expected", [
    (0.0, [[0, 1, 2, 3], [0, 2, 1, -1]]),      # relevance order
    (1.0, [[3, 2, 1, 0], [2, 1, 0, -1]]),      # lowest carbon first, seen item 3 never
    # 0.4 rel - 0.6 pen: user 0 -> -0.2, -0.05, -0.1, 0; user 1 -> -0.2, -0.4, -0.0667
    (0.6, [[3, 1, 2, 0], [2, 0, 1, -1]]),
])
def test_rerank_hand_computed(lam, expected):
    pen = carbon_penalty(PCF)
    np.testing.assert_allclose(pen, [1, 2 / 3, 1 / 3, 0])
    assert rerank(SCORES, pen, lam, k=4, seen=SEEN).tolist() == expected
    assert rerank_loop(SCORES, pen, lam, k=4, seen=SEEN).tolist() == expected
    assert rerank(SCORES, pen, lam, k=2, seen=SEEN).tolist() == [row[:2] for row in expected]


def test_penalty_is_log_space_and_missing_gets_median():
    np.testing.assert_allclose(carbon_penalty(np.array([1.0, 10.0, 100.0, np.nan])), [0, 0.5, 1, 0.5])
    # linear scaling would put 10 kg at 0.09; log space at the middle
    np.testing.assert_allclose(carbon_penalty(np.array([1.0, 10.0, 100.0]))[1], 0.5)


def test_relevance_normalisation_per_user_over_unseen():
    rel = normalize_relevance(np.array([[2.0, 2.0, 9.0], [0.0, 5.0, 10.0]]), np.array([[0, 0, 1], [0, 0, 0]], bool))
    assert rel[0].tolist() == [0.0, 0.0, -np.inf]     # unseen all tie -> 0, seen -> -inf
    np.testing.assert_allclose(rel[1], [0, 0.5, 1])


def test_vectorised_equals_loop_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 200))
    seen = rng.random((40, 200)) < 0.1
    seen[3, :195] = True                              # a user with fewer than k unseen items
    pen = carbon_penalty(10 ** rng.uniform(-2, 3, 200))
    for lam in (0.0, 0.1, 0.37, 0.8, 1.0):
        a, b = rerank(scores, pen, lam, 10, seen), rerank_loop(scores, pen, lam, 10, seen)
        assert np.array_equal(a, b), lam
    assert (rerank(scores, pen, 0.5, 10, seen)[3] == -1).sum() == 5


def test_read_pcf_estimate_jsonl_and_csv(tmp_path):
    j = tmp_path / "pcf.jsonl"       # the format `llmrec carbon estimate --out x.jsonl` writes
    j.write_text("\n".join(json.dumps({"id": i, "name": f"p{i}", "value_kg": v, "path": "nn"})
                           for i, v in [("a", 2.0), ("b", 30.0)]) + "\n")
    ids, pcf = read_pcf(j, ["b", "z", "a"])
    assert ids == ["b", "z", "a"] and pcf[0] == 30.0 and np.isnan(pcf[1]) and pcf[2] == 2.0
    c = tmp_path / "pcf.csv"
    pd.DataFrame({"item_id": ["0001", "b"], "pcf_kg": [5.0, 7.0]}).to_csv(c, index=False)
    assert read_pcf(c) == (["0001", "b"], pytest.approx(np.array([5.0, 7.0])))  # ids stay strings
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,pcf_kg\nx,lots\n")
    with pytest.raises(DataError, match=r"bad.csv.*record 1.*pcf_kg"):
        read_pcf(bad)


def test_pareto_front_and_reductions_hand_computed():
    t = pd.DataFrame({"lambda": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                      "ndcg@10": [0.100, 0.0995, 0.096, 0.094, 0.091, 0.05],
                      "mean_pcf_kg": [10.0, 6.0, 4.0, 5.0, 3.0, 1.0]})
    assert pareto_front(t["ndcg@10"], t["mean_pcf_kg"]).tolist() == [True, True, True, False, True, True]
    red = reductions(t)
    assert red["1%"]["lambda"] == 0.2 and red["1%"]["carbon_reduction"] == pytest.approx(0.4)
    assert red["5%"]["lambda"] == 0.4 and red["5%"]["carbon_reduction"] == pytest.approx(0.6)
    assert red["10%"]["lambda"] == 0.8 and red["10%"]["carbon_reduction"] == pytest.approx(0.7)


def _fake_cf(path, n_users=30, n_items=60, seed=0):
    """A BPR-MF-shaped run folder (what load_cf reads) with relevance correlated with carbon."""
    rng = np.random.default_rng(seed)
    path.mkdir()
    user_emb = rng.normal(size=(n_users, 4)).astype(np.float32)
    item_emb = rng.normal(size=(n_items, 4)).astype(np.float32)
    item_emb[:, 0] = np.linspace(-1, 2, n_items)      # a popularity direction: later items score higher
    user_emb[:, 0] = 2.0
    np.save(path / "user_emb.npy", user_emb)
    np.save(path / "item_emb.npy", item_emb)
    (path / "user_ids.json").write_text(json.dumps([f"u{i}" for i in range(n_users)]))
    (path / "item_ids.json").write_text(json.dumps([f"i{i}" for i in range(n_items)]))
    (path / "model.pt").write_bytes(b"")
    (path / "config.yaml").write_text("model: bprmf\n")
    (path / "metrics.json").write_text("{}")
    train = [np.sort(rng.choice(n_items, 5, replace=False)) for _ in range(n_users)]
    rest = [np.setdiff1d(np.arange(n_items), t) for t in train]
    valid = np.array([rng.choice(r) for r in rest])
    test = np.array([rng.choice(np.setdiff1d(r, [v])) for r, v in zip(rest, valid)])
    np.savez(path / "split.npz", train_indptr=np.r_[0, np.cumsum([len(t) for t in train])],
             train_items=np.concatenate(train), valid_item=valid, test_item=test, item_train_count=np.ones(n_items))
    pcf = 10 ** np.linspace(-1, 3, n_items)           # the higher-scoring items are the heavier ones
    return pcf


def test_sweep_on_a_cf_run_matches_its_topk(tmp_path):
    from llmrec.cf import load_cf

    pcf = _fake_cf(tmp_path / "run")
    cf = load_cf(tmp_path / "run")
    users, top0 = rerank_cf(cf, carbon_penalty(pcf), 0.0, 10, batch=7)
    for u, t in zip(users, top0):                     # lambda 0 is the model's own top-10 (seen masked)
        assert [cf.item_ids[i] for i in t] == [x for x, _ in cf.topk(cf.user_ids[u], 10)]
    _, top1 = rerank_cf(cf, carbon_penalty(pcf), 1.0, 10)
    for u, t in zip(users, top1):                     # lambda 1: the 10 lightest unseen items
        assert t.tolist() == [i for i in range(60) if i not in set(cf.seen_rows(cf.user_ids[u]))][:10]
    table = sweep(cf, pcf, np.linspace(0, 1, 11), batch=8, progress=False)
    ranks = [[x for x, _ in cf.topk(cf.user_ids[u], 10)].index(cf.item_ids[cf.test_item[u]])
             if cf.item_ids[cf.test_item[u]] in [x for x, _ in cf.topk(cf.user_ids[u], 10)] else None
             for u in range(30)]
    ndcg0 = np.mean([0 if r is None else 1 / np.log2(r + 2) for r in ranks])
    assert table["ndcg@10"].iloc[0] == pytest.approx(ndcg0)
    assert table["recall@10"].iloc[0] == pytest.approx(np.mean([r is not None for r in ranks]))
    expected_kg = np.mean(pcf[np.concatenate(top0)])
    assert table["mean_pcf_kg"].iloc[0] == pytest.approx(expected_kg)
    assert table["total_pcf_kg"].iloc[0] == pytest.approx(expected_kg * 300)
    assert table["mean_pcf_kg"].iloc[-1] < table["mean_pcf_kg"].iloc[0] / 100


def test_cli_rerank_and_frontier(tmp_path, capsys):
    from llmrec.cli.main import main

    pcf = _fake_cf(tmp_path / "run")
    pd.DataFrame({"item_id": [f"i{i}" for i in range(60)], "pcf_kg": pcf}).to_csv(tmp_path / "pcf.csv", index=False)
    assert main(["carbon", "rerank", "--cf", str(tmp_path / "run"), "--pcf", str(tmp_path / "pcf.csv"),
                 "--lambda", "1", "--k", "3", "--users", "u0,u5", "--out", str(tmp_path / "top.jsonl")]) == 0
    recs = [json.loads(x) for x in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert [r["user_id"] for r in recs] == ["u0", "u5"] and all(len(r["items"]) == 3 for r in recs)
    assert recs[0]["pcf_kg"] == sorted(recs[0]["pcf_kg"]) and recs[0]["pcf_kg"][0] <= pcf[2]
    assert main(["carbon", "frontier", "--cf", str(tmp_path / "run"), "--pcf", str(tmp_path / "pcf.csv"),
                 "--out", str(tmp_path / "fr"), "--points", "5"]) == 0
    t = pd.read_csv(tmp_path / "fr" / "run.csv")
    assert t["lambda"].tolist() == [0, 0.25, 0.5, 0.75, 1.0] and t["pareto"].any()
    assert (tmp_path / "fr" / "run.png").stat().st_size > 10_000
    assert set(json.loads((tmp_path / "fr" / "run.json").read_text())["reductions"]) == {"1%", "5%", "10%"}
    assert "carbon -" in capsys.readouterr().out


def test_any_models_scores_from_a_ranking_run(tmp_path, capsys):
    """An LLM ranker's candidate scores (a JSON run) re-ranked and swept over a CF run's split."""
    from llmrec.carbon.rerank import load_run_scores
    from llmrec.cf import load_cf
    from llmrec.cli.main import main

    pcf = _fake_cf(tmp_path / "run")
    cf = load_cf(tmp_path / "run")
    run, cands = {}, {}
    for u in (0, 4, 7):
        seen = set(cf.seen_rows(f"u{u}").tolist())
        others = [i for i in range(60) if i not in seen and i != cf.test_item[u]][:3]
        train_item = int(cf.train_items[cf.train_indptr[u]])
        # Scores: others[0] 9, the test item 8, others[1..2] 7 and 6; a seen item 10 (must stay masked).
        run[f"u{u}"] = {f"i{others[0]}": 9.0, f"i{cf.test_item[u]}": 8.0, f"i{others[1]}": 7.0,
                        f"i{others[2]}": 6.0, f"i{train_item}": 10.0}
        cands[u] = [others[0], int(cf.test_item[u]), others[1], others[2]]
    (tmp_path / "llm.json").write_text(json.dumps(run))
    model = load_run_scores(tmp_path / "llm.json", cf)
    assert model.scored_users.tolist() == [0, 4, 7]
    rows, top0 = rerank_cf(model, carbon_penalty(pcf), 0.0, k=10, users=model.scored_users)
    assert [t[t >= 0].tolist() for t in top0] == [cands[u] for u in (0, 4, 7)]   # unscored items never appear
    assert rows.tolist() == [0, 4, 7]
    _, top1 = rerank_cf(model, carbon_penalty(pcf), 1.0, k=10, users=model.scored_users)
    assert [t[t >= 0].tolist() for t in top1] == [sorted(cands[u]) for u in (0, 4, 7)]  # lightest = lowest index
    table = sweep(model, pcf, np.array([0.0, 1.0]), progress=False)
    assert table["n_users"].tolist() == [3, 3]
    assert table["ndcg@10"].iloc[0] == pytest.approx(1 / np.log2(3))           # test item second for all three
    assert table["recall@10"].tolist() == [1.0, 1.0]

    pd.DataFrame({"item_id": [f"i{i}" for i in range(60)], "pcf_kg": pcf}).to_csv(tmp_path / "pcf.csv", index=False)
    assert main(["carbon", "frontier", "--cf", str(tmp_path / "run"), "--scores", str(tmp_path / "llm.json"),
                 "--pcf", str(tmp_path / "pcf.csv"), "--out", str(tmp_path / "fr"), "--points", "3"]) == 0
    assert (tmp_path / "fr" / "run.csv").is_file() and (tmp_path / "fr" / "llm.csv").is_file()
    assert "llm (3 users): lambda 0 ndcg@10 0.6309" in capsys.readouterr().out
    assert main(["carbon", "rerank", "--cf", str(tmp_path / "run"), "--scores", str(tmp_path / "llm.json"),
                 "--pcf", str(tmp_path / "pcf.csv"), "--lambda", "0", "--out", str(tmp_path / "top.jsonl")]) == 0
    recs = [json.loads(x) for x in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert [r["user_id"] for r in recs] == ["u0", "u4", "u7"]
    assert recs[0]["items"] == [f"i{i}" for i in cands[0]]

    (tmp_path / "other.json").write_text(json.dumps({"stranger": {"i1": 1.0}}))
    with pytest.raises(LlmrecError, match="1 users \\(e.g. 'stranger'\\) are not in the CF run"):
        load_run_scores(tmp_path / "other.json", cf)
