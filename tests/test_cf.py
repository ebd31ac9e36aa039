"""Collaborative-filtering base models (llmrec.cf): split, metrics, learning on MovieLens-100K, artifacts, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmrec.cf.config import CFConfig
from llmrec.errors import DataError, LlmrecError
from llmrec.paths import configs_dir


def _recdata(rows: list[tuple[str, str, int]], items: list[str] | None = None):
    """A RecData from (user, item, timestamp) rows, in llmrec's schema."""
    import datasets

    from llmrec.data.schema import INTERACTION_FEATURES, ITEM_FEATURES, USER_FEATURES, RecData

    users = sorted({u for u, _, _ in rows})
    items = items or sorted({i for _, i, _ in rows})
    inter = {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "timestamp": [r[2] for r in rows],
             "rating": [None] * len(rows), "text": [""] * len(rows), "summary": [""] * len(rows)}
    return RecData(
        name="tiny",
        users=datasets.Dataset.from_dict({"user_id": users, "text": [""] * len(users)}, features=USER_FEATURES),
        items=datasets.Dataset.from_dict({"item_id": items, "title": items, "text": [""] * len(items),
                                          "categories": [[] for _ in items], "brand": [""] * len(items),
                                          "price": [None] * len(items)}, features=ITEM_FEATURES),
        interactions=datasets.Dataset.from_dict(inter, features=INTERACTION_FEATURES))


# Two users over five items. u1 in time order: a b c d (valid c, test d); u2: e a b a (valid b, test a: the
# repeat of train item a, which is masked, so no model can rank it).
TINY = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 4),
        ("u2", "e", 1), ("u2", "a", 2), ("u2", "b", 3), ("u2", "a", 4), ("u3", "a", 1), ("u3", "b", 2)]


def test_leave_one_out_arrays_by_hand():
    from llmrec.cf.interactions import build_cf_data

    cf = build_cf_data(_recdata(TINY))
    assert cf.user_ids == ["u1", "u2"]  # u3 has 2 interactions: dropped by leave-one-out
    assert cf.item_ids == ["a", "b", "c", "d", "e"]
    assert cf.valid_item.tolist() == [2, 1] and cf.test_item.tolist() == [3, 0]
    assert cf.train_matrix().toarray().tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]]
    assert cf.history_matrix().toarray().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 1]]
    assert cf.item_counts().tolist() == [2, 1, 0, 0, 1]
    assert cf.stats["test_item_already_in_history"] == 1 and cf.stats["valid_items_cold"] == 1


def test_full_ranking_metrics_mask_history_by_hand():
    """Dot-product scores with known ranks: masked items never count, metrics equal the hand values."""
    import torch

    from llmrec.cf.evaluate import evaluate_part
    from llmrec.cf.interactions import build_cf_data

    cf = build_cf_data(_recdata(TINY))
    # 1-d embeddings: score(u, i) = user * item. Item scores a..e = 5, 4, 3, 2, 1 for both users.
    user_emb = torch.tensor([[1.0], [1.0]])
    item_emb = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    valid = evaluate_part(cf, "valid", user_emb=user_emb, item_emb=item_emb)
    # u1 valid c: a, b masked (train) -> c first. u2 valid b: a, e masked -> b first.
    assert valid == pytest.approx({"ndcg@10": 1.0, "hr@10": 1.0, "mrr": 1.0})
    test = evaluate_part(cf, "test", user_emb=user_emb, item_emb=item_emb)
    # u1 test d: a, b, c masked -> d first. u2 test a: masked (in its history) -> never ranked, 0.
    assert test == pytest.approx({"ndcg@10": 0.5, "hr@10": 0.5, "mrr": 0.5})
    # Reverse the item order: u1 ranks e, d for test -> d at rank 2.
    test = evaluate_part(cf, "test", user_emb=user_emb, item_emb=-item_emb)
    assert test == pytest.approx({"ndcg@10": 0.5 / math.log2(3), "hr@10": 0.5, "mrr": 0.25})


def test_random_baseline_is_the_exact_expectation():
    """Averaging the real evaluator over all 120 orderings of the 5 items gives random_expected exactly."""
    import itertools

    import torch

    from llmrec.cf.evaluate import evaluate_part, random_expected
    from llmrec.cf.interactions import build_cf_data

    cf = build_cf_data(_recdata(TINY))
    for part in ("valid", "test"):
        runs = [evaluate_part(cf, part, user_emb=torch.ones(2, 1), item_emb=torch.tensor(p, dtype=torch.float32)[:, None])
                for p in itertools.permutations(range(5))]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        assert random_expected(cf, part) == pytest.approx(mean, abs=1e-12)
    # By hand, test: u1 has d and e left (d ranked 1st or 2nd), u2's test item is masked.
    assert random_expected(cf, "test") == pytest.approx(
        {"ndcg@10": (1 + 1 / math.log2(3)) / 4, "hr@10": 0.5, "mrr": 0.75 / 2})


def test_config_errors_and_yaml_with_flag_override():
    from llmrec.cf.recipe import parse

    with pytest.raises(LlmrecError, match="unknown CF model 'svd'.*bprmf, neumf, lightgcn"):
        CFConfig(model="svd")
    with pytest.raises(LlmrecError, match="mlp_layers"):
        CFConfig(model="neumf", mlp_layers=[63, 16])
    cfg = parse(["--config", str(configs_dir() / "cf_neumf.yaml"), "--epochs", "5", "--lr", "0.01"])
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.mlp_layers, cfg.num_negatives) == ("neumf", 5, 0.01, [64, 32, 16], 4)


@pytest.mark.parametrize("name", ["cf_bprmf.yaml", "cf_neumf.yaml", "cf_lightgcn.yaml"])
def test_shipped_configs_parse(name):
    from llmrec.cf.recipe import parse

    path = configs_dir() / name
    header = path.read_text().splitlines()[:3]
    assert header[0].startswith("# Purpose:") and header[1].startswith("# Run:")
    cfg = parse(["--config", str(path)])
    assert cfg.model == name[3:-5] and cfg.data.endswith("recbole_ml-100k")


def test_clear_errors_on_bad_data():
    from llmrec.cf.interactions import build_cf_data

    with pytest.raises(DataError, match="no interactions"):
        build_cf_data(_recdata([], items=["a"]))
    with pytest.raises(LlmrecError, match="no user has at least 3 interactions"):
        build_cf_data(_recdata([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1)]))


@pytest.fixture(scope="module")
def ml100k_cf(shared_data):
    from llmrec.cf.interactions import build_cf_data
    from llmrec.data.loading import load_recdata

    return build_cf_data(load_recdata(shared_data / "movielens" / "recbole_ml-100k"))


# Short budgets on ML-100K (2 threads). Popularity: valid NDCG@10 0.034, test 0.043; random (expected) 0.003.
# Measured over seeds 0-3 at these budgets (valid / test NDCG@10): BPR-MF 0.051-0.057 / 0.050-0.056,
# LightGCN 0.052-0.057 / 0.052-0.054, NeuMF 0.052-0.057 / 0.050-0.057.
SHORT_RUNS = {
    "bprmf": {"epochs": 6, "lr": 0.005},
    "lightgcn": {"epochs": 6, "lr": 0.02},
    "neumf": {"epochs": 4, "lr": 0.005, "dim": 32, "num_negatives": 4, "l2_reg": 0.0},
}


@pytest.fixture(scope="module")
def trained(ml100k_cf, tmp_path_factory):
    """Each model trained briefly on ML-100K and saved: {name: CFResult}."""
    from llmrec.cf.train import train_cf

    out = {}
    for name, kw in SHORT_RUNS.items():
        cfg = CFConfig(model=name, eval_every=kw["epochs"], patience=0, progress=False, seed=0, threads=2, **kw)
        out[name] = train_cf(cfg, data=ml100k_cf, out=tmp_path_factory.mktemp(f"cf_{name}"))
    return out


@pytest.mark.parametrize("name", list(SHORT_RUNS))
def test_models_learn_on_movielens(trained, name):
    m = trained[name].metrics
    valid, pop, rnd = m["valid"]["ndcg@10"], m["popularity"]["valid"]["ndcg@10"], m["random"]["valid"]["ndcg@10"]
    # Random ranking of ~1,600 candidates gives NDCG@10 of about 0.003; every model is over 12x that.
    assert valid > 5 * max(rnd, 0.004), (name, valid, rnd)
    # Every model reached at least 1.49x popularity on valid (seeds 0-3); 1.3x leaves room for noise.
    assert valid > 1.3 * pop, (name, valid, pop)
    # On test popularity is stronger (0.043); the models reached 1.14x it at least.
    assert m["test"]["ndcg@10"] > m["popularity"]["test"]["ndcg@10"], (name, m["test"], m["popularity"]["test"])
    assert m["epochs_run"] == SHORT_RUNS[name]["epochs"] and m["wall_seconds"] > 0


@pytest.mark.parametrize("name", list(SHORT_RUNS))
def test_artifacts_round_trip(trained, name):
    import torch

    from llmrec.cf import load_cf
    from llmrec.cf.evaluate import evaluate_saved

    res = trained[name]
    rec = load_cf(res.out)
    assert rec.user_ids == res.data.user_ids and rec.item_ids == res.data.item_ids
    assert rec.user_emb.dtype == np.float32 and rec.user_emb.shape[0] == res.data.n_users
    users, items = rec.user_ids[:7], rec.item_ids[::97]
    scores = rec.score(users, items)
    assert scores.shape == (7, len(items))
    if name == "neumf":
        with torch.no_grad():
            u = torch.as_tensor(rec.user_index(users))[:, None].expand(-1, len(items))
            expected = res.model(u, torch.as_tensor(rec.item_index(items))[None].expand(7, -1)).numpy()
    else:
        # score() is the dot product of the saved embeddings.
        emb_u, emb_i = np.load(res.out / "user_emb.npy"), np.load(res.out / "item_emb.npy")
        expected = emb_u[rec.user_index(users)] @ emb_i[rec.item_index(items)].T
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rec.score_pairs(users, items[:7]), np.diag(scores), rtol=1e-5, atol=1e-6)
    # Re-evaluating from the files gives the metrics measured at training time.
    again = evaluate_saved(rec, res.data, parts=("test",))["test"]
    assert again == pytest.approx(res.metrics["test"], abs=1e-9)
    assert json.loads((res.out / "metrics.json").read_text())["best_epoch"] == res.metrics["best_epoch"]
    assert (res.out / "curve.png").stat().st_size > 1000


def test_topk_never_returns_seen_items(trained):
    from llmrec.cf import load_cf

    rec = load_cf(trained["bprmf"].out)
    for user in rec.user_ids[:50]:
        seen = set(rec.seen_items(user))
        top = rec.topk(user, k=len(rec.item_ids))
        assert len(top) == len(rec.item_ids) - len(seen)
        assert not seen & {i for i, _ in top}
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    user = rec.user_ids[0]
    assert len(rec.topk(user, k=5)) == 5
    with_seen = rec.topk(user, k=len(rec.item_ids), exclude_seen=False)
    assert set(rec.seen_items(user)) <= {i for i, _ in with_seen}
    with pytest.raises(LlmrecError, match="unknown user id 'nobody'"):
        rec.topk("nobody")


def test_item_similarity_is_cosine(trained):
    from llmrec.cf import load_cf

    rec = load_cf(trained["lightgcn"].out)
    a, b = rec.item_ids[0], rec.item_ids[1]
    ea, eb = rec.item_emb[0].astype(np.float64), rec.item_emb[1].astype(np.float64)
    assert rec.item_similarity(a, b) == pytest.approx(ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb), abs=1e-6)
    assert rec.item_similarity(a, a) == pytest.approx(1.0, abs=1e-6)
    top = rec.similar_items(a, k=3)
    assert len(top) == 3 and a not in {i for i, _ in top}
    assert top[0][1] == pytest.approx(rec.item_similarities([a], [top[0][0]])[0, 0], abs=1e-6)


def test_cli_train_eval_recommend_end_to_end(shared_data, tmp_path, capsys):
    from llmrec.cli.main import main

    ml = shared_data / "movielens" / "recbole_ml-100k"
    out = tmp_path / "lgcn"
    rc = main(["cf", "train", "--config", str(configs_dir() / "cf_lightgcn.yaml"), "--data", str(ml),
               "--max_users", "80", "--epochs", "1", "--out", str(out), "--progress", "false"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "80 users" in printed and "popularity" in printed and "random" in printed
    for f in ("user_emb.npy", "item_emb.npy", "user_ids.json", "item_ids.json", "model.pt", "config.yaml",
              "metrics.json", "split.npz", "curve.png"):
        assert (out / f).is_file(), f
    assert len(json.loads((out / "user_ids.json").read_text())) == 80
    assert main(["cf", "eval", str(out)]) == 0
    assert "largest difference from the test metrics saved at training time: 0.00e+00" in capsys.readouterr().out
    user = json.loads((out / "user_ids.json").read_text())[0]
    assert main(["cf", "recommend", str(out), "--user", user, "--k", "3"]) == 0
    assert capsys.readouterr().out.count("\n") == 4


def test_cli_errors_are_one_line(tmp_path, capsys):
    from llmrec.cli.main import main

    assert main(["cf", "train", "--model", "svd", "--data", str(tmp_path)]) == 2
    assert "unknown CF model 'svd'" in capsys.readouterr().err
    assert main(["cf", "recommend", str(tmp_path), "--user", "1"]) == 2
    assert "not a complete llmrec CF model folder" in capsys.readouterr().err


def test_lightgcn_propagation_matches_pyg(ml100k_cf):
    """The symmetric-adjacency shortcut gives PyG's LightGCN.get_embedding and its gradient."""
    import torch

    from llmrec.cf.train import build_model

    torch.manual_seed(0)
    model = build_model(CFConfig(model="lightgcn", dim=8, num_layers=3), ml100k_cf)
    ours = model._propagate()
    (g_ours,) = torch.autograd.grad(ours.pow(2).sum(), model.gcn.embedding.weight)
    pyg = model.gcn.get_embedding(model.adj)
    (g_pyg,) = torch.autograd.grad(pyg.pow(2).sum(), model.gcn.embedding.weight)
    torch.testing.assert_close(ours, pyg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_pyg, rtol=1e-4, atol=1e-6)
