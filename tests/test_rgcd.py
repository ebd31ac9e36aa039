"""RGCD-Rep: teacher schema/cache/resume, losses, decomposition head, export/retrieval, metrics, recipe."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from llmrec.errors import LlmrecError
from llmrec.rgcd.config import HeadConfig
from llmrec.rgcd.decompose import RGCDHead, info_nce, orthogonality_loss, train_head
from llmrec.rgcd.domains import Item, build_cross_domain, item_text
from llmrec.rgcd.teacher import ItemReasoning, Teacher, TeacherCache, TeacherConfig, parse_reasoning

BEAUTY = ("amazon/openp5_beauty", "amazon/recbole_amazon_beauty/Amazon_Beauty.item")
GOOD = {"item_understanding": "A floral eau de parfum.", "user_needs": ["smell good"],
        "transferable_attributes": ["premium price", "floral taste"], "domain_specific_attributes": ["spray"]}


# --------------------------------------------------------------------------------------------
# A local OpenAI-compatible stub that counts requests
# --------------------------------------------------------------------------------------------


class StubTeacher:
    """``/v1/chat/completions`` answering GOOD (or ``answers[item line]``); records every request body."""

    def __init__(self, answers: dict[str, str] | None = None):
        self.requests: list[dict] = []
        self.answers = answers or {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                user = body["messages"][-1]["content"]
                content = next((a for key, a in stub.answers.items() if key in user), json.dumps(GOOD))
                payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": content}}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = StubTeacher()
    yield s
    s.close()


def _items(n: int, domain: str = "Fragrance") -> list[Item]:
    return [Item(f"i{k}", domain, f"Item {k}", f"Item {k} | category: {domain}") for k in range(n)]


# --------------------------------------------------------------------------------------------
# Teacher: schema, parsing, cache, resume
# --------------------------------------------------------------------------------------------


def test_parse_reasoning_schema():
    r = parse_reasoning(json.dumps(GOOD))
    assert r.transferable_attributes == ["premium price", "floral taste"]
    assert parse_reasoning("Sure!\n```json\n" + json.dumps(GOOD) + "\n```").user_needs == ["smell good"]
    with pytest.raises(ValueError, match="^invalid_json"):
        parse_reasoning("no json here")
    with pytest.raises(ValueError, match="^schema"):
        parse_reasoning(json.dumps({k: v for k, v in GOOD.items() if k != "user_needs"}))
    with pytest.raises(ValueError, match="^schema"):
        parse_reasoning(json.dumps({**GOOD, "user_needs": []}))  # at least one need
    schema = ItemReasoning.model_json_schema()
    assert schema["required"] == ["item_understanding", "user_needs", "transferable_attributes",
                                  "domain_specific_attributes"]
    assert schema["properties"]["transferable_attributes"]["maxItems"] == 5


def test_teacher_cache_never_asks_twice_and_resumes_after_interruption(stub, tmp_path):
    cache = tmp_path / "teacher.jsonl"
    config = TeacherConfig(endpoint=stub.url, model="m", concurrency=1)
    items = _items(8)

    class Stop(Exception):
        pass

    seen = []

    def stop_after_two(rec):
        seen.append(rec["item_id"])
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        Teacher(config, cache).teach(items, "Bath & Body", on_record=stop_after_two)
    # Stopped after two answers. The worker may have answered a few more meanwhile (a loaded machine):
    # those finish and are kept, so every request paid for is on disk; the queued ones are never sent.
    n_first = len(stub.requests)
    assert 2 <= n_first < 8 and len(cache.read_text().splitlines()) == n_first
    # structured outputs: the schema travels as response_format json_schema
    fmt = stub.requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == ItemReasoning.model_json_schema()
    assert "Bath & Body" in stub.requests[0]["messages"][-1]["content"]

    # an interrupted write leaves half a line: it is dropped, the run resumes where it stopped
    with open(cache, "a") as f:
        f.write('{"key": "half')
    report = Teacher(config, cache).teach(items, "Bath & Body")
    assert len(stub.requests) == 8  # the first run's + the missing ones, none twice
    assert (report.cached, report.requested, report.ok) == (n_first, 8 - n_first, 8)
    asked = [r["messages"][-1]["content"].split("\n")[0] for r in stub.requests]
    assert len(set(asked)) == 8
    assert len(cache.read_text().splitlines()) == 8

    # a third run and a run with two more items: only the new ones cost a request
    assert Teacher(config, cache).teach(items, "Bath & Body").requested == 0
    report = Teacher(config, cache).teach(_items(10), "Bath & Body")
    assert (report.cached, report.requested, len(stub.requests)) == (8, 2, 10)
    assert set(TeacherCache(cache).reasoning_by_item()) == {f"i{k}" for k in range(10)}
    # another prompt (other domain named) is another request
    assert Teacher(config, cache).teach(_items(1), "Makeup").requested == 1


def test_teacher_failures_are_recorded_and_not_retried_unless_asked(tmp_path):
    s = StubTeacher({"Item 1 |": "not json at all", "Item 2 |": json.dumps({**GOOD, "user_needs": "x"})})
    try:
        cache = tmp_path / "t.jsonl"
        config = TeacherConfig(endpoint=s.url, model="m", concurrency=3)
        report = Teacher(config, cache).teach(_items(3), "Makeup")
        assert report.ok == 1 and report.failed == {"invalid_json": 1, "schema": 1}
        assert Teacher(config, cache).teach(_items(3), "Makeup").requested == 0
        retry = TeacherConfig(endpoint=s.url, model="m", retry_failed=True)
        assert Teacher(retry, cache).teach(_items(3), "Makeup").requested == 2
        assert len(s.requests) == 5
    finally:
        s.close()
    # endpoint down: recorded as a connection failure, never raised
    down = TeacherConfig(endpoint="http://127.0.0.1:9/v1", model="m", timeout_s=5)
    report = Teacher(down, tmp_path / "down.jsonl").teach(_items(1), "Makeup")
    assert report.failed == {"connection": 1} and report.ok == 0


def test_teacher_config_validates():
    with pytest.raises(LlmrecError, match="structured"):
        TeacherConfig(structured="xml")


# --------------------------------------------------------------------------------------------
# Losses (hand-computed)
# --------------------------------------------------------------------------------------------


def test_info_nce_hand_computed():
    eye = torch.eye(2)
    # logits [[1, 0], [0, 1]] / t: CE = log(1 + exp(-1/t)) in both directions
    assert float(info_nce(eye, eye, temperature=1.0)) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert float(info_nce(eye, eye, temperature=0.5)) == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    # swapped positives: logits [[0, 1], [1, 0]] -> CE = log(1 + e)
    assert float(info_nce(eye, eye.flip(0), temperature=1.0)) == pytest.approx(math.log(1 + math.e), abs=1e-6)
    # scale does not matter (rows are normalised)
    assert float(info_nce(3 * eye, eye, 1.0)) == pytest.approx(float(info_nce(eye, eye, 1.0)), abs=1e-6)


def test_orthogonality_loss_hand_computed():
    zt = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(orthogonality_loss(zt, torch.tensor([[0.0, 5.0], [3.0, 0.0]]))) == 0.0  # orthogonal parts
    assert float(orthogonality_loss(zt, 2 * zt)) == pytest.approx(1.0)  # parallel
    diag = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert float(orthogonality_loss(zt, diag)) == pytest.approx(0.5)  # 45 degrees: cos^2 = 1/2
    assert float(orthogonality_loss(zt, torch.tensor([[0.0, 1.0], [1.0, 1.0]]))) == pytest.approx(0.25)  # (0 + .5)/2


def test_head_losses_split_and_nosplit():
    torch.manual_seed(0)
    feats = {"text": torch.randn(6, 8)}
    a, b, dom = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([0, 0, 0, 1, 1, 1])
    full = RGCDHead(8, HeadConfig(head_dim=4, head_hidden=16))
    parts = full.losses(feats, a, b, dom)
    assert set(parts) == {"contrastive", "orthogonality", "domain", "reconstruction", "loss"}
    expected = parts["contrastive"] + 0.1 * (parts["orthogonality"] + parts["domain"] + parts["reconstruction"])
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    plain = RGCDHead(8, HeadConfig(head_dim=4, head_hidden=16, head_split=False)).losses(feats, a, b, dom)
    assert set(plain) == {"contrastive", "loss"} and plain["loss"].item() == plain["contrastive"].item()
    with pytest.raises(LlmrecError):
        HeadConfig(head_temperature=0)


# --------------------------------------------------------------------------------------------
# Domains, retrieval, metrics on a hand-made case
# --------------------------------------------------------------------------------------------


def _hand_case():
    items = {i: Item(i, "S", i, i) for i in ("s1", "s2", "s3")}
    items.update({i: Item(i, "T", i, i) for i in ("t1", "t2", "t3", "t4")})
    inter = [("u1", "s1", 1), ("u1", "t1", 2), ("u1", "s2", 3), ("u2", "s2", 1), ("u2", "t2", 2),
             ("u3", "s3", 1), ("u3", "t3", 2), ("u3", "t4", 3), ("u4", "s1", 1), ("u5", "t4", 1)]
    return build_cross_domain(items, inter, "S", "T", test_frac=0.34, seed=0)


def test_cross_domain_split_by_user():
    cd = _hand_case()
    assert sorted(cd.train_users + cd.test_users) == ["u1", "u2", "u3"]  # u4, u5: one domain only
    assert len(cd.test_users) == 1 and not set(cd.test_users) & set(cd.train_users)
    assert cd.history["u1"] == ["s1", "s2"] and cd.target_items_of["u3"] == ["t3", "t4"]
    expected = {(s, t) for u in cd.train_users for s in cd.history[u] for t in cd.target_items_of[u]}
    assert set(cd.pairs) == expected  # only training users' pairs
    with pytest.raises(LlmrecError, match="same"):
        build_cross_domain(cd.items, [], "S", "S")


def test_retrieval_and_metrics_hand_case(tmp_path):
    from llmrec.cli.main import main
    from llmrec.eval.rgcd_eval import item_table, retrieval_metrics
    from llmrec.rgcd.export import CrossDomainRetriever, write_export

    cd = _hand_case()
    cd.test_users = ["u1", "u3"]  # evaluate two users whatever the split
    ids, doms = item_table(cd)
    assert ids == ["s1", "s2", "s3", "t1", "t2", "t3", "t4"]
    # 2-d vectors: angle decides; s1 and s2 average to 45 degrees
    ang = {"s1": 0, "s2": 90, "s3": 180, "t1": 40, "t2": 100, "t3": 170, "t4": -60}
    vec = np.array([[math.cos(math.radians(ang[i])), math.sin(math.radians(ang[i]))] for i in ids], np.float32)
    write_export(tmp_path / "exp", ids, doms, vec, titles=ids)
    retriever = CrossDomainRetriever.load(tmp_path / "exp")
    assert [i for i, _ in retriever.retrieve(["s1", "s2"], "T", 4)] == ["t1", "t2", "t4", "t3"]
    rows, _ = retriever.search([cd.history[u] for u in cd.test_users], "T", 2)
    # u1 (query 45 deg): [t1, t2], relevant t1 at rank 1 -> recall@2 1, ndcg@2 1
    # u3 (query 180 deg): [t3, t2], relevant t3, t4: hit at rank 1 -> recall@2 1/2, ndcg@2 1/(1 + 1/log2 3)
    m = retrieval_metrics(rows, cd, ids, [2])
    assert m["recall@2"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / (1 + 1 / math.log2(3))) / 2)

    assert main(["rgcd", "retrieve", "--export", str(tmp_path / "exp"), "--target", "T", "--history", "s3",
                 "--k", "1"]) == 0
    assert main(["rgcd", "retrieve", "--export", str(tmp_path / "exp"), "--target", "X", "--history", "s3"]) == 2


# --------------------------------------------------------------------------------------------
# Learning on real data (Amazon Beauty sub-domains)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def beauty_domains(shared_data):
    from llmrec.data import load_recdata
    from llmrec.rgcd.domains import category_domains

    data = load_recdata(shared_data / BEAUTY[0], item_meta=str(shared_data / BEAUTY[1]))
    return category_domains(data, "Bath & Body", "Fragrance", level=1, test_frac=0.2, seed=0)


def _tfidf(texts, dim=128):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(min_df=2).fit_transform(texts)
    return TruncatedSVD(dim, random_state=0).fit_transform(x).astype(np.float32)


def test_head_learns_cross_domain_retrieval_on_beauty(beauty_domains):
    """Real shared users: the trained head retrieves held-out Fragrance items from Bath & Body histories
    better than the same head untrained (measured: recall@20 0.129 vs 0.076, ndcg@20 0.066 vs 0.033 with
    TF-IDF item vectors), and its contrastive and domain losses fall."""
    from llmrec.eval.rgcd_eval import evaluate_methods, item_table, pair_rows
    from llmrec.rgcd.export import ItemFeatures

    cd = beauty_domains
    assert cd.source == "Bath & Body" and len(cd.test_users) > 100 and len(cd.pairs) > 1000
    assert all(cd.items[i].domain == "Fragrance" for u in cd.test_users for i in cd.target_items_of[u])
    ids, doms = item_table(cd)
    text = _tfidf([cd.items[i].text for i in ids])
    cfg = HeadConfig(head_epochs=20)
    _, history = train_head(text, pair_rows(cd, ids), np.array([d == cd.target for d in doms], int), cfg)
    assert history[-1]["contrastive"] < 0.8 * history[0]["contrastive"]
    assert history[-1]["domain"] < 0.5 * history[0]["domain"]
    assert history[-1]["orthogonality"] < 0.05
    feats = {"tfidf": ItemFeatures(text)}
    trained = evaluate_methods(cd, feats, ["tfidf+full"], cfg, ks=[20], log=lambda *_: None)[0]
    untrained = evaluate_methods(cd, feats, ["tfidf+full"], HeadConfig(head_epochs=0), ks=[20], log=lambda *_: None)[0]
    assert trained["recall@20"] > 1.4 * untrained["recall@20"]
    assert trained["ndcg@20"] > 1.4 * untrained["ndcg@20"]


# --------------------------------------------------------------------------------------------
# Encoders: the student (tiny causal LM) and the image path
# --------------------------------------------------------------------------------------------


def test_student_encoder_batch_equals_single(tiny_backbone):
    from llmrec.rgcd.encoders import StudentEncoder

    enc = StudentEncoder(tiny_backbone, max_length=64)
    texts = ["a short one", "a much longer product title with many more words in it | brand: X", "third"]
    batch = enc.encode(texts, batch_size=3)
    single = np.concatenate([enc.encode([t], batch_size=1) for t in texts])
    assert batch.shape == (3, enc.dim) and np.abs(batch - single).max() < 1e-4  # padding is masked out
    assert np.abs(batch[0] - batch[1]).max() > 1e-3


def test_image_path_changes_only_items_with_an_image(tmp_path):
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from llmrec.rgcd.encoders import ImageEncoder

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tmp_path / "v")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    paths = [str(tmp_path / "a.png"), None, str(tmp_path / "b.png")]
    enc = ImageEncoder(tmp_path / "v")
    img, has = enc.encode_paths(paths, batch_size=2)
    assert img.shape == (3, 32) and has.tolist() == [True, False, True]
    assert not img[1].any() and np.abs(img[0] - img[2]).max() > 1e-4
    text = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    head = RGCDHead(8, HeadConfig(head_dim=4, head_hidden=16), image_dim=32).eval()
    with_img, _ = head.embed(text, img, has)
    no_img, _ = head.embed(text, np.zeros_like(img), np.zeros(3, bool))
    assert np.allclose(with_img[1], no_img[1], atol=1e-6)  # no image: the text path alone
    assert np.abs(with_img[0] - no_img[0]).max() > 1e-4


# --------------------------------------------------------------------------------------------
# The recipe end to end on the tiny model (distill SFT + head + export), then `llmrec rgcd retrieve`
# --------------------------------------------------------------------------------------------


def test_train_rgcd_recipe_end_to_end(tiny_backbone, shared_data, beauty_domains, tmp_path, capsys):
    from llmrec.cli.main import main
    from llmrec.paths import configs_dir
    from llmrec.rgcd.teacher import TeacherTemplate, request_key

    cd = beauty_domains
    cache = TeacherCache(tmp_path / "teacher.jsonl")
    template = TeacherTemplate.load()
    other = {cd.source: cd.target, cd.target: cd.source}
    for iid in sorted(cd.items)[:6]:  # a cache as `llmrec rgcd teach` writes it
        msgs = template.messages(cd.items[iid], other[cd.items[iid].domain])
        cache.append({"key": request_key("m", msgs, "json_schema"), "item_id": iid, "ok": True,
                      "reasoning": GOOD, "error": None, "raw": json.dumps(GOOD)})
    out = tmp_path / "run"
    rc = main(["train", "rgcd", "--config", str(configs_dir() / "rgcd_beauty.yaml"),
               "--data", str(shared_data / BEAUTY[0]), "--item_meta", str(shared_data / BEAUTY[1]),
               "--teacher_cache", str(cache.path), "--model_name_or_path", str(tiny_backbone),
               "--backbone", str(tiny_backbone), "--output_dir", str(out), "--max_steps", "2",
               "--per_device_train_batch_size", "3", "--logging_steps", "1", "--max_length", "256",
               "--lora_target_modules", "q_proj", "v_proj", "--head_epochs", "2", "--encoder_max_length", "48",
               "--encode_batch_size", "64", "--student_pooling", "last", "--student_layer", "1",
               "--popularity_weight", "0.2"])
    assert rc == 0
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "metrics.jsonl").read_text().count("loss") >= 2
    info = json.loads((out / "llmrec_train.json").read_text())
    assert info["distill"]["examples"] == 6 and info["represent"]["pairs"] == len(cd.pairs)
    export = json.loads((out / "export" / "export.json").read_text())
    assert export["items"] == len(cd.items) and export["residual"] and set(export["indexes"]) == {cd.source, cd.target}
    assert np.load(out / "export" / "transferable.npy").shape == (len(cd.items), 64)
    assert (export["student_pooling"], export["student_layer"], export["popularity_weight"]) == ("last", 1, 0.2)
    counts = np.load(out / "export" / "popularity.npy")  # training users per item, evaluation users not counted
    ids = [json.loads(x)["item_id"] for x in (out / "export" / "items.jsonl").read_text().splitlines()]
    expected = cd.interaction_counts()
    assert counts.tolist() == [expected.get(i, 0) for i in ids] and counts.sum() > len(cd.pairs) / 10
    user = cd.test_users[0]
    capsys.readouterr()
    assert main(["rgcd", "retrieve", "--export", str(out / "export"), "--target", cd.target,
                 "--history", ",".join(cd.history[user]), "--k", "5"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["rank"] for x in lines] == [1, 2, 3, 4, 5]
    assert all(cd.items[x["item_id"]].domain == cd.target for x in lines)


def test_item_text():
    assert item_text("Rose &amp; Oud", ["Beauty", "Fragrance", "Women's"], "Jo", 55.0) == \
        "Rose & Oud | category: Fragrance > Women's | brand: Jo | price: $55.00"
    assert item_text("", [], "Unknown", None) == "(untitled)"


# --------------------------------------------------------------------------------------------
# The popularity prior: a bias column of the FAISS index, weight chosen on a dev split
# --------------------------------------------------------------------------------------------


def test_popularity_bias_hand_computed():
    from llmrec.rgcd.export import popularity_bias

    counts = np.array([0, 1, 3, 5, 5])
    bias = popularity_bias(counts, ["S", "S", "T", "T", "T"])
    # S: log1p 0, log 2 -> standardised -1, +1; T: log 4, log 6, log 6 -> mean m, population sd
    assert bias[:2].tolist() == pytest.approx([-1.0, 1.0])
    z = np.log([4.0, 6.0, 6.0])
    assert bias[2:].tolist() == pytest.approx(((z - z.mean()) / z.std()).tolist(), abs=1e-6)
    assert popularity_bias(np.array([2, 2]), ["S", "S"]).tolist() == [0.0, 0.0]  # nothing to prefer


def test_popularity_prior_is_exact_in_faiss_and_survives_the_export(tmp_path, capsys):
    from llmrec.cli.main import main
    from llmrec.rgcd.export import CrossDomainRetriever, _unit, popularity_bias, write_export

    rng = np.random.default_rng(0)
    ids = [f"s{k}" for k in range(5)] + [f"t{k}" for k in range(30)]
    doms = ["S"] * 5 + ["T"] * 30
    vec = _unit(rng.normal(size=(35, 8)))
    counts = rng.integers(0, 40, size=35)
    plain = CrossDomainRetriever(ids, doms, vec)
    with_counts = CrossDomainRetriever(ids, doms, vec, counts=counts)
    hist = [["s0", "s3"], ["s1"], ["s2", "s4", "s0"]]
    # weight 0 is the plain cosine
    assert np.array_equal(plain.search(hist, "T", 10)[0], with_counts.search(hist, "T", 10)[0])
    # any weight: the FAISS ranking and scores equal a brute-force cosine + W * bias over the whole domain
    bias = popularity_bias(counts, doms)
    q = with_counts.query_vectors(hist)
    for w in (0.05, 0.3, 2.0):
        rows, scores = with_counts.search(hist, "T", 30, popularity_weight=w)
        brute = q @ vec[5:].T + w * bias[5:]
        assert np.allclose(scores, -np.sort(-brute, axis=1), atol=1e-5)
        assert np.array_equal(rows, 5 + np.argsort(-brute, axis=1, kind="stable"))
    # a large weight ranks by popularity alone
    top = with_counts.search(hist[:1], "T", 5, popularity_weight=1e4)[0][0]
    assert counts[top].tolist() == sorted(counts[5:].tolist(), reverse=True)[:5]
    with pytest.raises(LlmrecError, match="counts"):
        plain.search(hist, "T", 3, popularity_weight=0.1)

    # the export keeps the counts and its default weight; `retrieve` can override it
    write_export(tmp_path / "exp", ids, doms, vec, counts=counts, popularity_weight=0.3)
    meta = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert meta["popularity"] and meta["popularity_weight"] == 0.3 and meta["dim"] == 8
    assert np.load(tmp_path / "exp" / "popularity.npy").tolist() == counts.tolist()
    loaded = CrossDomainRetriever.load(tmp_path / "exp")
    assert loaded.popularity_weight == 0.3
    assert loaded.retrieve(["s1"], "T", 7) == with_counts.retrieve(["s1"], "T", 7, popularity_weight=0.3)
    assert CrossDomainRetriever.load(tmp_path / "exp", 0.0).retrieve(["s1"], "T", 7) == plain.retrieve(["s1"], "T", 7)
    capsys.readouterr()
    assert main(["rgcd", "retrieve", "--export", str(tmp_path / "exp"), "--target", "T", "--history", "s1",
                 "--k", "3", "--popularity_weight", "1e4"]) == 0
    got = [json.loads(x)["item_id"] for x in capsys.readouterr().out.splitlines()]
    assert got == [i for i, _ in with_counts.retrieve(["s1"], "T", 3, popularity_weight=1e4)]
    # an export without counts still loads (no popularity column) and refuses a weight
    write_export(tmp_path / "old", ids, doms, vec)
    assert CrossDomainRetriever.load(tmp_path / "old").retrieve(["s1"], "T", 7) == plain.retrieve(["s1"], "T", 7)
    with pytest.raises(LlmrecError, match="counts"):
        CrossDomainRetriever.load(tmp_path / "old", 0.5)


def test_parse_method():
    from llmrec.eval.rgcd_eval import parse_method

    assert parse_method("minilm") == ("minilm", "", False)
    assert parse_method("minilm+nosplit+pop") == ("minilm", "nosplit", True)
    assert parse_method("student+pop") == ("student", "", True)
    assert parse_method("student+full") == ("student", "full", False)
    for bad in ("minilm+half", "minilm+full+nosplit", "+pop"):
        with pytest.raises(LlmrecError, match="ENCODER"):
            parse_method(bad)


def test_dev_split_uses_training_users_only(beauty_domains):
    cd = beauty_domains
    dev = cd.dev_split(0.2)
    assert set(dev.train_users) | set(dev.test_users) == set(cd.train_users)
    assert not set(dev.train_users) & set(dev.test_users)
    assert not set(dev.test_users) & set(cd.test_users)  # the evaluation users never take part
    assert len(dev.test_users) == round(0.2 * len(cd.train_users))
    fit = set(dev.train_users)
    allowed = {(s, t) for u in fit for s in cd.history[u] for t in cd.target_items_of[u]}
    assert dev.pairs and set(dev.pairs) <= allowed
    assert len(dev.pairs) < len(cd.pairs)
    counts = dev.interaction_counts()
    some = dev.test_users[0]
    only_dev = [i for i in cd.target_items_of[some]
                if not any(i in cd.target_items_of[u] for u in fit)]
    assert all(counts.get(i, 0) == 0 for i in only_dev)
    assert dev.dev_split(0.2).test_users != dev.test_users or len(dev.train_users) < 2


def test_popularity_prior_weight_is_chosen_on_dev_and_helps_on_beauty(beauty_domains):
    """Measured with TF-IDF item vectors (split seed 0, head_epochs 10): the dev split picks W = 1 for both
    +pop rows and recall@20 rises from 0.097 (tfidf+nosplit) to 0.182 (popularity alone: 0.196); the head is
    trained once for both rows."""
    from llmrec.eval.rgcd_eval import POPULARITY_GRID, evaluate_methods, item_table
    from llmrec.rgcd.export import ItemFeatures

    cd = beauty_domains
    ids, _ = item_table(cd)
    feats = {"tfidf": ItemFeatures(_tfidf([cd.items[i].text for i in ids]))}
    rows = evaluate_methods(cd, feats, ["tfidf+nosplit", "tfidf+nosplit+pop", "tfidf+pop"], HeadConfig(), ks=[20],
                            log=lambda *_: None)
    base, pop, pop_raw = rows
    assert pop["final_losses"] == base["final_losses"]  # one head for both rows
    for row in (pop, pop_raw):
        dev = row["dev_grid"]
        assert [r["weight"] for r in dev] == sorted(POPULARITY_GRID)
        best = max(r["recall@20"] for r in dev)
        assert row["popularity_weight"] == min(r["weight"] for r in dev if r["recall@20"] == best)
        # the row's own figures are those of the chosen W on the evaluation users
        chosen = next(r for r in row["test_grid"] if r["weight"] == row["popularity_weight"])
        assert row["recall@20"] == pytest.approx(chosen["recall@20"])
    assert pop["popularity_weight"] > 0
    assert pop["recall@20"] > 1.3 * base["recall@20"]
    fixed = evaluate_methods(cd, feats, ["tfidf+nosplit+pop"], HeadConfig(), ks=[20], log=lambda *_: None,
                             popularity_weight=0.0)[0]
    assert "dev_grid" not in fixed and fixed["recall@20"] == pytest.approx(base["recall@20"])


# --------------------------------------------------------------------------------------------
# Student pooling (mean / last token, any layer) and its feature cache
# --------------------------------------------------------------------------------------------


def test_pool_hidden_hand_computed_left_and_right_padding():
    from llmrec.rgcd.encoders import pool_hidden

    h = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # [b=2, s=3, h=2]
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert pool_hidden(h, right, "mean").tolist() == [[1.0, 2.0], [8.0, 9.0]]  # rows 0-1 of item 0
    assert pool_hidden(h, right, "last").tolist() == [[2.0, 3.0], [10.0, 11.0]]
    assert pool_hidden(h, left, "mean").tolist() == [[3.0, 4.0], [8.0, 9.0]]
    assert pool_hidden(h, left, "last").tolist() == [[4.0, 5.0], [10.0, 11.0]]


def test_student_pooling_and_layer(tiny_backbone):
    from llmrec.rgcd.encoders import StudentEncoder

    texts = ["a short one", "a much longer product title with many more words in it | brand: X", "third"]
    vecs = {}
    for pooling, layer in (("mean", -1), ("last", -1), ("mean", 1), ("last", 1)):
        enc = StudentEncoder(tiny_backbone, max_length=64, pooling=pooling, layer=layer)
        batch = enc.encode(texts, batch_size=3)
        single = np.concatenate([enc.encode([t], batch_size=1) for t in texts])
        assert np.abs(batch - single).max() < 1e-4, (pooling, layer)  # padding never leaks in
        vecs[pooling, layer] = batch
    # the last token's state of one unpadded prompt, read off the model directly
    enc = StudentEncoder(tiny_backbone, max_length=64, pooling="last", layer=1)
    ids = enc.tokenizer(enc._format(texts[1]), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        states = enc.model(**ids, output_hidden_states=True).hidden_states
    assert np.allclose(vecs["last", 1][1], states[1][0, -1].numpy(), atol=1e-5)
    assert np.allclose(vecs["mean", 1][1], states[1][0].mean(0).numpy(), atol=1e-5)
    keys = list(vecs)
    assert all(np.abs(vecs[a] - vecs[b]).max() > 1e-3 for a in keys for b in keys if a != b)
    with pytest.raises(LlmrecError, match="out of range"):
        StudentEncoder(tiny_backbone, layer=3)  # 2 layers: hidden states 0..2
    with pytest.raises(LlmrecError, match="pooling"):
        StudentEncoder(tiny_backbone, pooling="max")


def test_eval_cli_caches_each_pooling_apart(tiny_backbone, shared_data, tmp_path):
    from llmrec.cli.main import main

    out = tmp_path / "eval"
    common = ["rgcd", "eval", "--data", str(shared_data / BEAUTY[0]), "--item_meta", str(shared_data / BEAUTY[1]),
              "--source", "Bath & Body", "--target", "Fragrance", "--backbone", str(tiny_backbone),
              "--max_length", "48", "--batch_size", "64", "--methods", "student,student+pop",
              "--popularity_weight", "0.1", "--out", str(out)]
    assert main(common) == 0
    assert main([*common, "--student_pooling", "last", "--student_layer", "1"]) == 0
    mean, last = np.load(out / "features_student_base_mean_L-1.npz"), np.load(out / "features_student_base_last_L1.npz")
    assert list(mean["ids"]) == list(last["ids"]) and np.abs(mean["text"] - last["text"]).max() > 1e-3
    report = json.loads((out / "report.json").read_text())
    assert report["student_pooling"] == "last" and report["student_layer"] == 1
    assert [r["method"] for r in report["rows"]] == ["student", "student+pop"]
    assert report["rows"][1]["popularity_weight"] == 0.1


# --------------------------------------------------------------------------------------------
# The teacher prompt, and the teacher against the real vLLM server
# --------------------------------------------------------------------------------------------


def test_teacher_prompt_has_a_one_shot_example_outside_the_pair():
    from llmrec.rgcd.teacher import TeacherTemplate

    template = TeacherTemplate.load()
    assert template.max_tokens == 512
    msgs = template.messages(Item("x", "Fragrance", "Rose", "Rose | category: Fragrance"), "Bath & Body")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert template.example["domain"] not in ("Fragrance", "Bath & Body")
    example = ItemReasoning.model_validate_json(msgs[2]["content"])  # the worked answer fits the schema
    assert example.model_dump() == ItemReasoning.model_validate(template.example["answer"]).model_dump()
    assert msgs[3]["content"].startswith("Product (Fragrance): Rose | category: Fragrance")
    assert "Bath & Body" in msgs[3]["content"]
    # no sentence to fill in: the earlier prompt's "one sentence on what the product is and does" was
    # copied into 147 of 199 answers by SmolLM2-135M
    assert "one sentence" not in (template.system + template.user).lower()
    bad = {**template.example, "answer": {**template.example["answer"], "user_needs": []}}
    with pytest.raises(LlmrecError, match="schema"):
        TeacherTemplate(template.system, template.user, template.student, example=bad)


def _vllm_requests_total(server) -> float:
    import httpx

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


@pytest.fixture(scope="module")
def teacher_vllm_server(tiny_backbone):
    """The real vLLM server on the tiny backbone, with ``disable_any_whitespace`` for structured outputs.

    The session's ``tiny_vllm_server`` cannot serve this test: vLLM's JSON grammar allows any whitespace
    between tokens by default, and the random model then writes spaces until ``max_tokens`` (6 of 6 answers
    when tried), so no answer ever finishes; with it all 6 finish, their strings filled to maxLength.
    SmolLM2-135M wrote tabs until max_tokens in 6 of its 240 teacher answers (runs/rgcd_measure2).
    """
    from llmrec.serving.vllm_server import VLLMServer

    no_whitespace = json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})
    args = ["--dtype", "float32", "--structured-outputs-config", no_whitespace]
    with VLLMServer(tiny_backbone, served_model_name="tiny", max_model_len=2048, extra_args=args) as server:
        yield server


def test_teach_against_the_real_vllm_server(teacher_vllm_server, shared_data, tmp_path, monkeypatch, capsys):
    """`llmrec rgcd teach --structured json_schema` on vLLM's OpenAI server: constrained decoding holds even
    for the tiny random model (every answer that finished parses with the schema), a rerun sends nothing,
    and each record is fsynced as one JSON line when it arrives."""
    import os

    from llmrec.cli.main import main

    tiny_vllm_server = teacher_vllm_server
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    cache = tmp_path / "teacher.jsonl"
    argv = ["rgcd", "teach", "--data", str(shared_data / BEAUTY[0]), "--item_meta", str(shared_data / BEAUTY[1]),
            "--source", "Bath & Body", "--target", "Fragrance", "--cache", str(cache), "--max_items", "6",
            "--endpoint", tiny_vllm_server.base_url, "--model", "tiny", "--structured", "json_schema",
            "--max_tokens", "1000", "--concurrency", "6", "--timeout_s", "120"]
    before = _vllm_requests_total(tiny_vllm_server)
    assert main(argv) == 0
    assert _vllm_requests_total(tiny_vllm_server) == before + 6
    lines = cache.read_text().splitlines()
    assert len(lines) == 6 and len(synced) == 6  # one fsync per record
    records = [json.loads(line) for line in lines]
    assert len({r["item_id"] for r in records}) == 6
    finished = [r for r in records if r["finish"] == "stop"]
    assert finished, [r["finish"] for r in records]  # at least one answer must be complete to test anything
    for r in finished:
        assert r["ok"], r["error"]
        assert ItemReasoning.model_validate_json(r["raw"]).model_dump() == r["reasoning"]
    for r in records:
        assert r["finish"] in ("stop", "length") and r["raw"]
        if not r["ok"]:
            assert r["finish"] == "length" and r["error"].startswith("invalid_json")  # cut off, not off-schema
    capsys.readouterr()
    assert main(argv) == 0  # resume: everything is cached
    assert "6 from the cache, 0 requested" in capsys.readouterr().out
    assert _vllm_requests_total(tiny_vllm_server) == before + 6
    assert len(cache.read_text().splitlines()) == 6 and len(synced) == 6


def test_head_standardize_uses_item_statistics_and_survives_save(tmp_path):
    rng = np.random.default_rng(0)
    # a large shared component (as in LLM hidden states) on top of small item-specific parts
    text = (rng.normal(size=(40, 8)) + 50.0 * np.ones(8)).astype(np.float32)
    pairs = np.array([(i, 20 + i) for i in range(20)])
    dom = np.array([0] * 20 + [1] * 20)
    cfg = HeadConfig(head_dim=4, head_hidden=16, head_epochs=2, head_standardize=True)
    head, _ = train_head(text, pairs, dom, cfg)
    assert np.allclose(head.in_mean.numpy(), text.mean(0), atol=1e-4)
    assert np.allclose(head.in_std.numpy(), text.std(0, ddof=1), atol=1e-4)
    z = torch.as_tensor(text)
    assert torch.allclose(head._normed(z), head.norm((z - z.mean(0)) / z.std(0)), atol=1e-5)
    loaded = RGCDHead.load(head.save(tmp_path / "h"))
    assert np.allclose(loaded.embed(text)[0], head.embed(text)[0], atol=1e-6)
    plain, _ = train_head(text, pairs, dom, HeadConfig(head_dim=4, head_hidden=16, head_epochs=2))
    assert not hasattr(plain, "in_mean")  # the default is unchanged (heads saved before still load)
