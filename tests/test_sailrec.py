"""SAILRec: steering through transformers' attention interface, soft-token layout, codebook, alignment, recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


class _Layer(torch.nn.Module):
    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx


def test_layer_schedule():
    from llmrec.errors import LlmrecError
    from llmrec.sailrec.steering import layer_schedule

    assert layer_schedule(4, -1.0, 2.0) == [-1.0, -1.0, 2.0, 2.0]
    assert layer_schedule(30, -2.0, 3.0, split=0.2)[:7] == [-2.0] * 6 + [3.0]
    assert layer_schedule(2, explicit=[0.5, -0.5]) == [0.5, -0.5]
    with pytest.raises(LlmrecError, match="3 values; the model has 2 layers"):
        layer_schedule(2, explicit=[1, 2, 3])


def test_bias_multiplies_the_odds_of_cf_mass_by_exp_b():
    """Hand case: two keys with equal logits share 0.5 each; bias ln 3 on the first gives 3/4. Random case:
    the odds of the CF mass grow by exactly e^b per query row, and zero bias is plain attention."""
    from llmrec.sailrec.steering import steered_attention

    q = torch.zeros(1, 1, 1, 4)
    k = torch.randn(1, 1, 2, 4)
    v = torch.tensor([[[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]]])
    cf = torch.tensor([[True, False]])
    out, w = steered_attention(_Layer(0), q, k, v, None, 1.0, sailrec_cf_keys=cf,
                               sailrec_bias=torch.tensor([math.log(3.0)]))
    assert torch.allclose(w[0, 0, 0], torch.tensor([0.75, 0.25]))
    assert torch.allclose(out[0, 0, 0, :2], torch.tensor([0.75, 0.25]))

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)  # GQA: 4 heads, 2 kv
    cf = torch.zeros(2, 5, dtype=torch.bool)  # mask shorter than the keys: keys 5, 6 count as text
    cf[:, 1] = cf[:, 3] = True
    bias = torch.tensor([0.0, -1.5])
    _, w0 = steered_attention(_Layer(1), q, k, v, None, 0.35, sailrec_cf_keys=cf, sailrec_bias=torch.zeros(2))
    _, w1 = steered_attention(_Layer(1), q, k, v, None, 0.35, sailrec_cf_keys=cf, sailrec_bias=bias)
    m0, m1 = w0[..., [1, 3]].sum(-1), w1[..., [1, 3]].sum(-1)
    assert torch.allclose((m1 / (1 - m1)) / (m0 / (1 - m0)), torch.full_like(m0, math.exp(-1.5)), rtol=1e-4)
    ref = torch.softmax(q @ k.repeat_interleave(2, 1).transpose(2, 3) * 0.35, -1)
    assert torch.allclose(w0, ref, atol=1e-6)


def _prompt(tiny_backbone):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.float32)
    torch.manual_seed(0)
    x = torch.randn(2, 9, model.config.hidden_size) * 0.5
    cf = torch.zeros(2, 9, dtype=torch.bool)
    cf[:, 2] = cf[:, 5] = True
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, -2:] = 0  # right padding on the second row
    return model, x, cf, mask


def _row_masses(model, x, cf, mask, bias):
    out = model(inputs_embeds=x, attention_mask=mask, output_attentions=True, sailrec_cf_keys=cf,
                sailrec_bias=torch.tensor(bias))
    return [w[..., cf[0]].sum(-1) for w in out.attentions], out.logits  # per layer [b, heads, q]


def test_model_steering_acts_at_the_configured_layers(tiny_backbone):
    """In the tiny Qwen2 (2 layers): a bias only on layer 1 leaves layer 0 exactly as it was and multiplies the
    odds of every query's CF mass in layer 1 by e^b; a bias on layer 0 does it there. Zero bias = stock sdpa."""
    from llmrec.sailrec import steering

    model, x, cf, mask = _prompt(tiny_backbone)
    with torch.no_grad():
        stock = model(inputs_embeds=x, attention_mask=mask).logits
        steering.enable(model)
        assert model.config._attn_implementation == "sailrec"
        (a0, a1), plain = _row_masses(model, x, cf, mask, [0.0, 0.0])
        (b0, b1), _ = _row_masses(model, x, cf, mask, [0.0, 2.0])
        (c0, _), _ = _row_masses(model, x, cf, mask, [-3.0, 0.0])
    valid = (torch.arange(9) > 2)[None, None, :] & mask.bool()[:, None, :]  # queries that see a CF key
    assert torch.allclose(plain[mask.bool()], stock[mask.bool()], atol=1e-5)
    assert torch.equal(a0, b0)
    odds = lambda m: m / (1 - m)
    assert torch.allclose((odds(b1) / odds(a1))[valid.expand_as(a1)], torch.tensor(math.exp(2.0)), rtol=1e-3)
    assert torch.allclose((odds(c0) / odds(a0))[valid.expand_as(a0)], torch.tensor(math.exp(-3.0)), rtol=1e-3)
    # the diagnostic's summary: less mass in the suppressed layer, more in the strengthened one
    before = steering.cf_attention_mass(model, x, cf, mask, None)
    after = steering.cf_attention_mass(model, x, cf, mask, torch.tensor([-3.0, 2.0]))
    assert after[0] < before[0] / 5 and after[1] > before[1]


def test_kv_cache_decoding_keeps_the_steering(tiny_backbone):
    """Scoring shares the prompt's KV cache: prompt + continuation with the cache equals one full forward."""
    from llmrec.sailrec import steering

    model, x, cf, _ = _prompt(tiny_backbone)
    steering.enable(model)
    bias = torch.tensor([-2.0, 2.5])
    with torch.no_grad():
        ids = torch.tensor([[5, 9, 11]])
        full_x = torch.cat([x[:1], model.get_input_embeddings()(ids)], 1)
        full = model(inputs_embeds=full_x, sailrec_cf_keys=cf[:1], sailrec_bias=bias).logits
        first = model(inputs_embeds=x[:1], use_cache=True, sailrec_cf_keys=cf[:1], sailrec_bias=bias)
        rest = model(input_ids=ids, past_key_values=first.past_key_values, sailrec_cf_keys=cf[:1],
                     sailrec_bias=bias).logits
        unsteered = model(inputs_embeds=full_x).logits
    assert torch.allclose(rest, full[:, 9:], atol=1e-4)
    assert not torch.allclose(unsteered[:, 9:], full[:, 9:], atol=1e-3)


def test_layout_puts_soft_tokens_next_to_titles(tiny_backbone):
    from transformers import AutoTokenizer

    from llmrec.sailrec.layout import SailRecTemplate, build_layout, embed_layout, prompt_embeds
    from llmrec.sailrec.projector import SoftTokenProjector

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    tpl = SailRecTemplate.load()
    titles = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)"]
    lay = build_layout(tok, tpl, titles, [4, 7, 2], user_row=3)
    assert len(lay.ids) == len(lay.slot_user) == len(lay.slot_item)
    assert [lay.slot_user[p] for p in lay.cf_positions] == [3, -1, -1, -1]
    assert [lay.slot_item[p] for p in lay.cf_positions] == [-1, 4, 7, 2]
    # each item's soft token comes right after its title, the user's right after "A user"
    for pos, title in zip(lay.cf_positions[1:], titles):
        assert tok.decode(lay.ids[:pos]).endswith(f"- {title}")  # no space token before it
    assert tok.decode(lay.ids[:lay.cf_positions[0]]).endswith("A user")
    text = build_layout(tok, tpl, titles, [4, 7, 2], user_row=3, cf=False)
    assert text.cf_positions == [] and "A user chose" in tok.decode(text.ids)

    torch.manual_seed(0)
    proj = SoftTokenProjector(8, 8, 128, 16, 1, 4, width=16, embed_norm=2.0)
    table = torch.randn(tok.vocab_size + 10, 128)
    user_emb, item_emb = torch.randn(5, 8), torch.randn(9, 8)
    x = prompt_embeds(tok, table, proj, user_emb, item_emb, lay)
    with torch.no_grad():
        assert torch.allclose(x[lay.cf_positions[0]], proj.user(user_emb[3]), atol=1e-5)
        assert torch.allclose(x[lay.cf_positions[2]], proj.item(item_emb[7]), atol=1e-5)
        assert torch.allclose(x[lay.cf_positions[2]].norm(), torch.tensor(2.0), atol=1e-5)  # on the token-embedding scale
    text_pos = [p for p in range(len(lay.ids)) if p not in lay.cf_positions]
    assert torch.equal(x[text_pos], table[torch.tensor(lay.ids)[text_pos]])
    t = lambda v: torch.tensor([v])
    batch = embed_layout(table, proj, user_emb, item_emb, t(lay.slot_user), t(lay.slot_item), t(lay.ids))
    assert torch.allclose(batch[0], x)  # the training path builds the same tensor as serving


def test_codebook_and_profiles_by_hand():
    from llmrec.sailrec.codebook import residual_codebook, user_profiles

    codes = np.array([[0, 1], [1, 1], [1, 0]])
    prof = user_profiles(codes, [[0, 1, 2], [2], []], codes=2)
    assert np.allclose(prof[0], [[1 / 3, 2 / 3], [1 / 3, 2 / 3]])
    assert np.allclose(prof[1], [[0, 1], [1, 0]])
    assert np.allclose(prof[2], 0.5)  # no history: uniform

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    one, two = residual_codebook(x, codes=8, levels=1), residual_codebook(x, codes=8, levels=2)
    assert two.codes.shape == (200, 2) and two.codes.max() < 8
    err = lambda b: float(((x - b.reconstruct()) ** 2).sum())
    assert err(two) < 0.8 * err(one) < 0.8 * float((x ** 2).sum())


def test_alignment_losses_by_hand():
    from llmrec.sailrec.projector import item_alignment_loss, user_alignment_loss

    # user side: uniform logits over 4 codes -> log 4 whatever the profile; the profile's own log -> its entropy
    prof = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    assert torch.isclose(user_alignment_loss(torch.zeros(1, 1, 4), prof), torch.tensor(math.log(4)))
    logits = torch.log(torch.tensor([[[0.5, 0.5, 1e-9, 1e-9]]]))
    assert torch.isclose(user_alignment_loss(logits, prof), torch.tensor(math.log(2)), atol=1e-6)
    # item side: identity read-out, tokens equal to their texts (orthogonal) -> each row's logits are 1/tau
    # on the diagonal and 0 elsewhere: loss = log(1 + (n-1) e^{-1/tau})
    eye = torch.eye(3)
    loss = item_alignment_loss(eye, eye, torch.nn.Identity(), torch.tensor(math.log(0.5)))
    assert torch.isclose(loss, torch.tensor(math.log(1 + 2 * math.exp(-2.0))))
    swapped = item_alignment_loss(eye, eye[[1, 2, 0]], torch.nn.Identity(), torch.tensor(math.log(0.5)))
    assert swapped > loss + 1.5
    assert item_alignment_loss(eye[:1], eye[:1], torch.nn.Identity(), torch.tensor(0.0)) == 0


@pytest.fixture(scope="module")
def small_cf(shared_data, tmp_path_factory):
    """BPR-MF on the first 60 users of ML-100K (2 epochs), saved like 'llmrec cf train'."""
    from llmrec.cf.config import CFConfig
    from llmrec.cf.train import train_cf

    cfg = CFConfig(model="bprmf", data=str(shared_data / "movielens" / "recbole_ml-100k"), max_users=60, epochs=2,
                   lr=0.01, dim=16, eval_every=2, patience=0, progress=False, seed=0, threads=2)
    out = tmp_path_factory.mktemp("cf_small")
    train_cf(cfg, out=out)
    return out


def test_recipe_trains_evaluates_and_reloads(tiny_backbone, small_cf, tmp_path):
    """The recipe end to end on real ML-100K users with the tiny model: the projector trains (the alignment
    losses fall from where they start), eval.json ranks all four systems, the diagnostic reloads the run."""
    import json

    from llmrec.training.sailrec_recipe import attention_report, parse, train_sailrec

    out = tmp_path / "run"
    args, targs, margs = parse(
        ["--config", "configs/sailrec_ml100k.yaml", "--cf_dir", str(small_cf), "--max_train_users", "48",
         "--max_eval_users", "6", "--codebook_codes", "4", "--projector_width", "32", "--item_align_weight", "1",
         "--user_align_weight", "1", "--steer_shallow", "-1", "--steer_deep", "1.5", "--num_train_epochs", "5",
         "--per_device_train_batch_size", "8", "--learning_rate", "0.01", "--warmup_steps", "0", "--logging_steps",
         "1", "--output_dir", str(out), "--lr_scheduler_type", "constant"], prog="llmrec train sailrec")
    run, report = train_sailrec(tiny_backbone, args, targs, margs)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "item_align" in r]
    assert len(steps) == 30
    first, last = steps[:3], steps[-3:]
    for key in ("item_align", "user_align", "loss"):
        assert np.mean([r[key] for r in last]) < np.mean([r[key] for r in first]), key
    assert report["cases"] == 6 and report["schedule"] == [-1.0, 1.5]
    assert set(report["results"]) == {"sailrec", "sailrec_unsteered", "text_only", "cf"}
    assert all(0 <= m["ndcg@10"] <= m["hr@10"] <= 1 for m in report["results"].values())
    assert json.loads((run / "eval.json").read_text()) == report
    # Per-user ranks behind the means, and the paired comparisons of SAILRec against each other system.
    from llmrec.eval.llm_ranking import ndcg_at_k_of_ranks

    for name, ranks in report["ranks"].items():
        assert len(ranks) == 6 and all(1 <= r <= 20 for r in ranks)
        assert np.mean(np.asarray(ranks) == 1) == pytest.approx(report["results"][name]["hr@1"])
        assert ndcg_at_k_of_ranks(ranks).mean() == pytest.approx(report["results"][name]["ndcg@10"])
    assert set(report["paired_ndcg@10"]) == {"sailrec - sailrec_unsteered", "sailrec - text_only", "sailrec - cf"}
    vs_cf = report["paired_ndcg@10"]["sailrec - cf"]
    assert vs_cf["mean_diff"] == pytest.approx(report["results"]["sailrec"]["ndcg@10"] - report["results"]["cf"]["ndcg@10"])
    # `llmrec sailrec eval` rebuilds the run and ranks the same users the same way.
    from llmrec.cli.main import main

    assert main(["sailrec", "eval", str(run), "--users", "6", "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["user_ids"] == report["user_ids"] and again["ranks"] == report["ranks"]
    for name, metrics in report["results"].items():
        assert again["results"][name] == pytest.approx(metrics)

    rep = attention_report(run, users=2, out_png=tmp_path / "attn.png")
    assert (tmp_path / "attn.png").stat().st_size > 5000 and (tmp_path / "attn.json").is_file()
    assert rep["cf_tokens_per_prompt"] == 9  # the user + max_history (8) items
    assert rep["mass_steered"][0] < rep["mass_unsteered"][0] and rep["mass_steered"][1] > rep["mass_unsteered"][1]


def test_config_errors():
    from llmrec.errors import LlmrecError
    from llmrec.training.sailrec import SailRecConfig

    with pytest.raises(LlmrecError, match="give cf_dir"):
        SailRecConfig()
    with pytest.raises(LlmrecError, match="steer_split"):
        SailRecConfig(cf_dir="x", steer_split=2)
    assert SailRecConfig(cf_dir="x", steer=False).schedule(3) == [0.0, 0.0, 0.0]
    assert SailRecConfig(cf_dir="x", steer_schedule=[1, 2, 3]).schedule(3) == [1.0, 2.0, 3.0]


def test_side_module_folders_name_the_command_that_makes_them(tmp_path):
    from llmrec.errors import LlmrecError
    from llmrec.sailrec.projector import load_projector
    from llmrec.training.tapper import load_encoder

    with pytest.raises(LlmrecError, match="not a 'llmrec train sailrec' output folder"):
        load_projector(tmp_path)
    with pytest.raises(LlmrecError, match="not a 'llmrec train tapper' output folder"):
        load_encoder(tmp_path)


def test_vllm_serves_the_soft_tokens_without_the_steering(tiny_backbone, tiny_vllm_server):
    """SAILRec's prompt_embeds through the real vLLM server give HF's greedy tokens *without* steering; with a
    strong schedule HF's tokens differ: stock vLLM serves the soft tokens, not the per-layer steering."""
    import httpx
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.sailrec import steering
    from llmrec.sailrec.layout import SailRecTemplate, build_layout, prompt_embeds
    from llmrec.sailrec.projector import SoftTokenProjector
    from llmrec.serving.prompt_embeds import encode_embeds
    from llmrec.training.tapper import mean_embedding_norm

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    model = steering.enable(AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.float32).eval())
    torch.manual_seed(1)
    proj = SoftTokenProjector(8, 8, model.config.hidden_size, 16, 1, 4, width=16,
                              embed_norm=mean_embedding_norm(model) * 3)
    lay = build_layout(tok, SailRecTemplate.load(), ["Heat (1995)", "Fargo (1996)"], [1, 2], user_row=0)
    x = prompt_embeds(tok, model.get_input_embeddings().weight.detach(), proj, torch.randn(1, 8), torch.randn(3, 8), lay)
    cf = torch.zeros(1, len(lay.ids), dtype=torch.bool)
    cf[0, lay.cf_positions] = True
    n = 6

    def hf_greedy(bias):
        """Greedy tokens and their log-probabilities, recomputed from scratch at every step."""
        seq, out, logps = x[None], [], []
        with torch.no_grad():
            for _ in range(n):
                logits = model(inputs_embeds=seq, sailrec_cf_keys=cf, sailrec_bias=torch.tensor(bias)).logits
                out.append(int(logits[0, -1].argmax()))
                logps.append(float(logits[0, -1].log_softmax(-1)[out[-1]]))
                seq = torch.cat([seq, model.get_input_embeddings()(torch.tensor([[out[-1]]]))], 1)
        return out, logps

    r = httpx.post(f"{tiny_vllm_server.base_url}/completions", timeout=120, json={
        "model": "tiny", "prompt_embeds": encode_embeds(x), "max_tokens": n, "temperature": 0, "ignore_eos": True,
        "return_token_ids": True, "logprobs": 1})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    plain_ids, plain_lp = hf_greedy([0.0, 0.0])
    assert choice["token_ids"] == plain_ids
    assert np.allclose(choice["logprobs"]["token_logprobs"], plain_lp, atol=2e-3)
    steered_ids, steered_lp = hf_greedy([-8.0, 8.0])
    assert steered_ids != plain_ids or not np.allclose(steered_lp, plain_lp, atol=2e-2)
