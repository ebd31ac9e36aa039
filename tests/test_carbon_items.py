"""Catalog items as carbon-estimation products (llmrec.carbon.items, ``llmrec carbon items``)."""

from __future__ import annotations

import json

import pytest

from llmrec.carbon.items import ReviewDescription, catalog_items
from llmrec.carbon.reference import load_items
from llmrec.cli.main import main
from llmrec.data.assemble import ItemRow, RecDataBuilder


def _data():
    b = RecDataBuilder("Musical_Instruments")
    b.add_item("titled", ItemRow(title="Nylon guitar strings", brand="Acme", categories=["Music", "Strings"]),
               file="meta", record=1)
    b.add_item("bare", ItemRow(title="Drum stool"), file="meta", record=2)
    # Metadata as Amazon ships it: HTML entities, and a placeholder brand that names no maker.
    b.add_item("entity", ItemRow(title="L&#39;Oreal Paris Lipstick", brand="L&#39;Oreal Paris"), file="meta", record=3)
    b.add_item("nobrand", ItemRow(title="Guitar capo", brand=" Generic "), file="meta", record=4)
    b.add_interaction("u1", "titled", 10, 5.0, "Great strings.", "Nice")
    # Untitled item: reviews out of time order; a repeated summary; the longest reviews come first.
    b.add_interaction("u2", "pedal", 30, 4.0, "Short one. Second.", "Works fine")
    b.add_interaction("u1", "pedal", 20, 5.0, "This sustain pedal is sturdy. The cable is long. It never slips.",
                      "Solid pedal")
    b.add_interaction("u3", "pedal", 40, 3.0, "", "works FINE")
    b.add_interaction("u3", "bare", 50, 3.0, "", "")
    b.add_interaction("u3", "silent", 60, 3.0, "", "")    # no title, no review text: left out
    return b.build()


def test_titled_items_use_metadata_and_untitled_items_their_reviews():
    recs = {r["id"]: r for r in catalog_items(_data())}
    assert set(recs) == {"titled", "bare", "pedal", "entity", "nobrand"}
    assert (recs["entity"]["name"], recs["entity"]["description"]) == ("L'Oreal Paris Lipstick", "L'Oreal Paris")
    assert recs["nobrand"]["description"] == ""
    assert recs["titled"] == {"id": "titled", "name": "Nylon guitar strings", "description": "Acme",
                              "category": "Strings", "source": "title"}
    # No category: the data set's name stands in so the retriever knows the domain.
    assert recs["bare"]["category"] == "Musical Instruments" and recs["bare"]["source"] == "title"
    # Summaries in time order, case-insensitively distinct; the two opening sentences of the longest review first.
    assert recs["pedal"] == {"id": "pedal", "name": "Solid pedal; Works fine",
                             "description": "This sustain pedal is sturdy. The cable is long. Short one. Second.",
                             "category": "Musical Instruments", "source": "reviews"}


def test_review_description_limits():
    how = ReviewDescription(summaries=1, reviews=1, sentences=1, max_chars=20)
    rec = {r["id"]: r for r in catalog_items(_data(), how, default_category="Music")}["pedal"]
    assert rec["name"] == "Solid pedal"
    assert rec["description"] == "This sustain pedal"   # cut at a word boundary within 20 characters
    assert rec["category"] == "Music"


def test_cli_on_real_reviews_without_titles(shared_data, tmp_path, capsys):
    mi = shared_data / "amazon" / "musical_instruments_5core_2014"
    if not mi.is_dir():
        pytest.skip("Amazon Musical Instruments reviews not in ../shared/data")
    out = tmp_path / "items.jsonl"
    assert main(["carbon", "items", str(mi), "--out", str(out)]) == 0
    assert "900 of 900 items written (0 by title, 900 by reviews" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 900 and all(r["name"] and r["description"] for r in lines)
    # The 2014 5-core ships no titles, yet reviews name the product: item B00004Y2UT is an instrument cable.
    cable = next(r for r in lines if r["id"] == "B00004Y2UT")
    assert "cable" in (cable["name"] + cable["description"]).lower()
    # It is a valid --items file for `llmrec carbon estimate`.
    assert len(load_items(out)) == 900
