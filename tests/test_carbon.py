"""PCF estimation (llmrec.carbon): reference loading, NN in log space, metrics, grouped CV, LLM fallback paths."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from llmrec.carbon.config import CarbonConfig, load_config
from llmrec.carbon.cv import company_folds, paired_bootstrap, pcf_metrics
from llmrec.carbon.estimate import CarbonEstimator, ParseFailure, nn_log10, parse_answer
from llmrec.carbon.reference import ColumnMap, ReferenceSet, load_reference, to_kg
from llmrec.errors import DataError, LlmrecError

CATALOGUE = ("carbon", "carbon_catalogue", "carbon_catalogue_product_level.csv")


# --------------------------------------------------------------------------------------------
# A 3-product reference with fixed unit vectors, so similarities are known exactly
# --------------------------------------------------------------------------------------------

def _frame(rows):
    return pd.DataFrame([{"id": str(i), "company": "", "description": "", **r} for i, r in enumerate(rows)],
                        columns=list(ReferenceSet.COLUMNS))


REF3 = ReferenceSet(_frame([{"name": "Water bottle", "category": "Packaging", "pcf_kg": 1.0},
                            {"name": "Office chair", "category": "Furniture", "pcf_kg": 10.0},
                            {"name": "Laptop", "category": "IT", "pcf_kg": 1000.0}]))
REF3_VECTORS = np.eye(3, dtype=np.float32)
ITEM = ReferenceSet(_frame([{"name": "Desk lamp", "category": "Furniture", "pcf_kg": float("nan")}]))
# Cosine similarities to the three references are proportional to 0.5, 0.3, 0.2.
ITEM_VECTOR = (np.array([[0.5, 0.3, 0.2]]) / math.sqrt(0.38)).astype(np.float32)


def _estimator(config: CarbonConfig) -> CarbonEstimator:
    return CarbonEstimator(REF3, config, vectors=REF3_VECTORS)


def test_units_convert_to_kg():
    assert to_kg(1500, "g CO2e") == pytest.approx(1.5)
    assert to_kg(2, "t CO2e") == 2000 and to_kg(2, "tonnes of CO2e") == 2000 and to_kg(2, "tCO2-eq") == 2000
    assert to_kg(3, "kg") == 3 and to_kg(3, "KgCO2e") == 3
    with pytest.raises(ValueError, match="unknown unit 'furlongs'"):
        to_kg(1, "furlongs")


def test_generic_csv_with_unit_column_and_located_errors(tmp_path):
    good = tmp_path / "ref.csv"
    good.write_text("Name,Description,Category,PCF,Unit\nA,first,X,1500,g CO2e\nB,,Y,2,t CO2e\nC,BLANK,Y,4,kg\n")
    ref = load_reference(good)
    assert ref.layout == "generic" and list(ref.pcf_kg) == [1.5, 2000.0, 4.0]
    assert list(ref.frame["description"]) == ["first", "", ""]  # "BLANK" is a placeholder, not a description

    bad = tmp_path / "bad.csv"
    bad.write_text("Name,Category,PCF\nA,X,3\nB,X,-2\n")
    with pytest.raises(DataError, match=r"bad.csv: record 2, field 'PCF': PCF must be a positive number"):
        load_reference(bad)
    bad.write_text("Name,Category,PCF,Unit\nA,X,3,kg\nB,X,2,bushels\n")
    with pytest.raises(DataError, match=r"record 2, field 'Unit': unknown unit 'bushels'"):
        load_reference(bad)
    bad.write_text("Name,Category,PCF\nA,X,3\n,X,2\n")
    with pytest.raises(DataError, match=r"record 2, field 'Name': empty product name"):
        load_reference(bad)
    bad.write_text("Title;Sector;Emissions\nA;X;3\n")
    with pytest.raises(LlmrecError, match="cannot tell which column holds pcf"):
        load_reference(bad)
    ref = load_reference(bad, ColumnMap.parse("name=Title,category=Sector,pcf=Emissions,pcf_unit=t,sep=;"))
    assert ref.pcf_kg[0] == 3000 and ref.frame["category"][0] == "X"


def test_carbon_catalogue_and_its_copy_load_alike(shared_data):
    ref = load_reference(shared_data.joinpath(*CATALOGUE))
    assert ref.layout == "carbon_catalogue" and len(ref) == 866
    assert ref.frame["company"].nunique() == 145 and ref.frame["category"].nunique() == 8
    assert ref.pcf_kg.min() == pytest.approx(0.0004) and ref.pcf_kg.max() == pytest.approx(3718044)
    assert not ref.frame["description"].str.lower().isin(["blank", "field not included in 2013 data"]).any()
    copy = load_reference(shared_data / "carbon" / "datacamp_product_emissions" / "product_emissions.csv")
    assert copy.layout == "datacamp"
    joined = ref.frame.merge(copy.frame, on="id", suffixes=("", "_copy"))  # same products, another row order
    assert len(joined) == 866 and np.allclose(joined["pcf_kg"], joined["pcf_kg_copy"])


# --------------------------------------------------------------------------------------------
# Hand-computed NN and metrics
# --------------------------------------------------------------------------------------------

def test_nn_is_similarity_weighted_mean_in_log_space():
    # log10 PCFs 0, 1, 3 with weights 0.5, 0.3, 0.2: (0 + 0.3 + 0.6) / 1.0 = 0.9
    assert nn_log10([1, 10, 1000], [0.5, 0.3, 0.2]) == pytest.approx(0.9)
    assert nn_log10([1, 10, 1000], [0.5, 0.3, 0.2], power=2) == pytest.approx(0.21 / 0.38)
    assert nn_log10([1, 10, 1000], [0.5, 0.3, 0.2], power=0) == pytest.approx(4 / 3)

    est = _estimator(CarbonConfig(mode="nn", k=3)).estimate_many(ITEM, vectors=ITEM_VECTOR, progress=False)[0]
    assert est.path == "nn" and est.value_kg == pytest.approx(10 ** 0.9)
    assert [n.name for n in est.neighbours] == ["Water bottle", "Office chair", "Laptop"]
    assert [n.similarity for n in est.neighbours] == pytest.approx(np.array([0.5, 0.3, 0.2]) / math.sqrt(0.38))
    top2 = _estimator(CarbonConfig(mode="nn", k=2)).estimate_many(ITEM, vectors=ITEM_VECTOR, progress=False)[0]
    assert top2.value_kg == pytest.approx(10 ** (0.3 / 0.8))


def test_metrics_hand_computed():
    # |log10 errors| = 0.30103, 0, 1, 0.60206
    m = pcf_metrics([1, 10, 100, 1000], [2, 10, 10, 4000])
    assert m["n"] == 4
    assert m["median_abs_log10"] == pytest.approx((math.log10(2) + math.log10(4)) / 2)
    assert m["within_2x"] == 0.5  # exactly 2x counts as within
    assert m["mape"] == pytest.approx((1 + 0 + 0.9 + 3) / 4 * 100)
    assert m["mean_abs_log10"] == pytest.approx((math.log10(2) + 0 + 1 + math.log10(4)) / 4)
    assert pcf_metrics([1, 10], [np.nan, 10])["n"] == 1  # missing predictions are left out
    # a is exact, b is 10x off everywhere: a's median error is lower by exactly 1 in every resample
    b = paired_bootstrap([1, 10, 100], [1, 10, 100], [10, 100, 1000], n_boot=50)
    assert b["diff"] == pytest.approx(-1) and b["ci95"] == pytest.approx([-1, -1]) and b["a_better_share"] == 1


def test_parse_answer_reads_json_fences_and_free_text():
    a = parse_answer('{"value": 2.5, "unit": "t CO2e", "rationale": "steel"}')
    assert (a.value_kg, a.rationale, a.how) == (2500.0, "steel", "json")
    assert parse_answer('Sure!\n```json\n{"value": "1,200", "unit": "g"}\n```').value_kg == pytest.approx(1.2)
    assert parse_answer('The answer: {"value": 7} as asked').value_kg == 7  # no unit: kg, as the prompt asks
    a = parse_answer("I think it is about 3.5 tonnes CO2e over its life.")
    assert (a.value_kg, a.how) == (3500.0, "regex")
    with pytest.raises(ParseFailure) as e:
        parse_answer("lorem ipsum 42 dolor")
    assert e.value.reason == "unparseable"
    with pytest.raises(ParseFailure) as e:
        parse_answer('{"value": 3, "unit": "bananas"}')
    assert e.value.reason == "unit"


def test_config_file_and_unknown_keys(tmp_path):
    from llmrec.paths import configs_dir

    cfg = load_config(configs_dir() / "carbon_estimate.yaml", k=7)
    assert cfg.mode == "hybrid" and cfg.k == 7 and cfg.max_tokens is None
    bad = tmp_path / "c.yaml"
    bad.write_text("kk: 3\n")
    with pytest.raises(DataError, match="field 'kk': unknown setting"):
        load_config(bad)
    with pytest.raises(LlmrecError, match="mode must be one of"):
        CarbonConfig(mode="magic")


# --------------------------------------------------------------------------------------------
# The LLM path and its fallbacks
# --------------------------------------------------------------------------------------------

def _chat_response(content: str) -> bytes:
    return json.dumps({"id": "stub", "object": "chat.completion", "created": 0, "model": "stub",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


@pytest.fixture
def stub_endpoint():
    """A local HTTP stub answering every chat request with a fixed reply (after ``delay`` seconds)."""
    state = {"content": "", "delay": 0.0, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append(body)
            time.sleep(state["delay"])
            payload = _chat_response(state["content"])
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["base_url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def test_wellformed_llm_answer_is_used_and_prompt_has_the_neighbours(stub_endpoint):
    stub_endpoint["content"] = '{"value": 2500, "unit": "g CO2e", "rationale": "a small lamp"}'
    cfg = CarbonConfig(endpoint=stub_endpoint["base_url"], model="stub", k=3, timeout_s=10)
    est = _estimator(cfg).estimate_many(ITEM, vectors=ITEM_VECTOR, progress=False)[0]
    assert est.path == "llm" and est.value_kg == pytest.approx(2.5) and est.rationale == "a small lamp"
    assert est.nn_value_kg == pytest.approx(10 ** 0.9) and est.parse == "json"
    (req,) = stub_endpoint["requests"]
    msgs = req["messages"]
    assert req["model"] == "stub" and req["temperature"] == 0
    assert req.get("max_completion_tokens", req.get("max_tokens")) == 64  # langchain-openai sends the newer name
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    # the few-shot examples are the retrieved references, the nearest one last, with their PCF
    assert "Laptop" in msgs[1]["content"] and json.loads(msgs[2]["content"])["value"] == 1000
    assert "Water bottle" in msgs[5]["content"] and json.loads(msgs[6]["content"])["value"] == 1
    assert msgs[-1]["content"].startswith("Product: Desk lamp")
    assert "response_format" not in req
    json_cfg = CarbonConfig(endpoint=stub_endpoint["base_url"], model="stub", k=3, json_mode=True)
    assert _estimator(json_cfg).estimate_many(ITEM, vectors=ITEM_VECTOR, progress=False)[0].path == "llm"
    assert stub_endpoint["requests"][-1]["response_format"] == {"type": "json_object"}


def test_implausible_and_timeout_fall_back(stub_endpoint):
    cfg = CarbonConfig(endpoint=stub_endpoint["base_url"], model="stub", k=3, timeout_s=10)
    stub_endpoint["content"] = '{"value": 1e12, "unit": "kg CO2e"}'  # > 10 x the largest reference PCF
    est = _estimator(cfg).estimate_many(ITEM, vectors=ITEM_VECTOR, progress=False)[0]
    assert est.path == "nn_fallback:implausible" and est.value_kg == pytest.approx(10 ** 0.9)
    assert est.llm_value_kg == 1e12
    stub_endpoint["content"] = '{"value": 2000, "unit": "kg CO2e"}'  # within bounds, 2.4 decades from NN (7.9 kg)
    near = CarbonConfig(endpoint=stub_endpoint["base_url"], model="stub", k=3, max_decades_from_nn=2)
    assert _estimator(near).estimate_many(ITEM, vectors=ITEM_VECTOR, progress=False)[0].path == \
        "nn_fallback:implausible"
    stub_endpoint["delay"] = 3.0
    slow = CarbonConfig(endpoint=stub_endpoint["base_url"], model="stub", k=3, timeout_s=0.5)
    est = _estimator(slow).estimate_many(ITEM, vectors=ITEM_VECTOR, progress=False)[0]
    assert est.path == "nn_fallback:timeout" and est.value_kg == pytest.approx(10 ** 0.9)


def test_endpoint_down_falls_back_to_nn():
    from llmrec.serving.vllm_server import free_port

    cfg = CarbonConfig(endpoint=f"http://127.0.0.1:{free_port()}/v1", model="none", k=3, timeout_s=5)
    ests = _estimator(cfg).estimate_many(ReferenceSet(pd.concat([ITEM.frame] * 2, ignore_index=True)),
                                         vectors=np.repeat(ITEM_VECTOR, 2, axis=0), progress=False)
    assert [e.path for e in ests] == ["nn_fallback:connection"] * 2
    assert all(e.value_kg == pytest.approx(10 ** 0.9) and e.llm_value_kg is None for e in ests)
    assert "ConnectionError" in ests[0].error


def test_garbage_from_the_real_vllm_server_falls_back(tiny_vllm_server):
    """The tiny random model behind vLLM answers noise: every estimate must come from the NN fallback."""
    cfg = CarbonConfig(endpoint=tiny_vllm_server.base_url, model="tiny", k=3, timeout_s=60)
    items = ReferenceSet(pd.concat([ITEM.frame] * 4, ignore_index=True))
    ests = _estimator(cfg).estimate_many(items, vectors=np.repeat(ITEM_VECTOR, 4, axis=0), progress=False)
    for e in ests:
        assert e.llm_raw, "the server must have answered (text), not failed to connect"
        assert e.path in ("nn_fallback:unparseable", "nn_fallback:unit", "nn_fallback:implausible"), (e.path, e.llm_raw)
        assert e.value_kg == pytest.approx(10 ** 0.9)


# --------------------------------------------------------------------------------------------
# Grouped CV on the real catalogue, through the CLI
# --------------------------------------------------------------------------------------------

def test_grouped_folds_keep_companies_apart(shared_data):
    ref = load_reference(shared_data.joinpath(*CATALOGUE))
    folds = company_folds(ref, 5)
    companies = ref.frame["company"].to_numpy()
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(ref)))
    for tr, te in folds:
        assert not set(companies[tr]) & set(companies[te])
        assert len(te) > 100


def test_cli_eval_nn_beats_global_median_on_the_catalogue(shared_data, tmp_path):
    from llmrec.cli.main import main

    out = tmp_path / "cv"
    assert main(["carbon", "eval", "--reference", str(shared_data.joinpath(*CATALOGUE)), "--folds", "5",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["estimator"]: r for r in report["table"]}
    assert rows["nn"]["n"] == rows["global_median"]["n"] == 866
    # measured: NN 0.684 vs global median 1.216 median |log10 err|; within 2x 0.316 vs 0.113
    assert rows["nn"]["median_abs_log10"] < rows["global_median"]["median_abs_log10"] - 0.35
    assert rows["nn"]["median_abs_log10"] < rows["category_median"]["median_abs_log10"] - 0.1
    assert rows["nn"]["within_2x"] > rows["global_median"]["within_2x"] + 0.12
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 866 and set(pred["fold"]) == set(range(5)) and (out / "cv.png").stat().st_size > 10_000


def test_cli_estimate_nn_mode_and_bad_reference(tmp_path, capsys):
    from llmrec.cli.main import main

    ref = tmp_path / "ref.csv"
    ref.write_text("name,description,category,pcf_kg\n"
                   "Cotton T-shirt,short-sleeved cotton shirt,Textiles,7\n"
                   "Denim jacket,cotton denim jacket,Textiles,20\n"
                   "Steel beam,structural steel I-beam per metre,Construction,90\n"
                   "Concrete block,hollow concrete masonry block,Construction,15\n")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"name": "Wool sweater", "description": "knitted sweater", "category": "Textiles"})
                     + "\n")
    out = tmp_path / "pcf.jsonl"
    assert main(["carbon", "estimate", "--reference", str(ref), "--items", str(items), "--out", str(out),
                 "--mode", "nn", "--k", "2"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["path"] == "nn" and row["name"] == "Wool sweater"
    assert {n["name"] for n in row["neighbours"]} == {"Cotton T-shirt", "Denim jacket"}
    sims = [n["similarity"] for n in row["neighbours"]]
    assert row["value_kg"] == pytest.approx(10 ** nn_log10([n["pcf_kg"] for n in row["neighbours"]], sims))
    assert 7 < row["value_kg"] < 20

    ref.write_text("name,category,pcf_kg\nA,X,1\nB,X,lots\n")
    assert main(["carbon", "estimate", "--reference", str(ref), "--items", str(items), "--out", str(out)]) == 2
    assert "field 'pcf_kg': PCF 'lots' is not a number" in capsys.readouterr().err
