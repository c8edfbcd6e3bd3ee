"""`evaluate_model` on the tiny model (random weights, saved to a folder) with small limits: the summary.json
contract, reproducibility, the GenEval layout of the images, GenEval's result fields, and exact scores on a stub
model whose images are known to be half right. Seconds."""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from gvu.eval import evaluate as evaluation
from gvu.eval.evaluate import benchmark_rows
from gvu.eval.prompts import spread
from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig
from gvu.eval.judging import judge_folder
from gvu.eval.layout import load_image, read_layout
from gvu.eval.metadata import write_metadata
from gvu.eval.prompts import build_geneval, build_genevalpp
from gvu.models.builtin.model import build_builtin, save_builtin
from gvu.models.protocol import Rollout
from gvu.world.render import blank_tokens, decode
from gvu.world.scene import realise, scene_tokens

LIMIT, PER_PROMPT = 7, 2  # 7 = GenEval++'s number of tags, so every tag appears (see test_spread_keeps_every_tag)
GENEVAL_FIELDS = {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}


def evaluate_model(model, *args, **kw):
    """`gvu eval`'s call: a model folder loaded, unguided sampling."""
    return evaluation.evaluate_model(load_model(model) if isinstance(model, str) else model, *args,
                                     sampling=SamplingConfig(), **kw)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_builtin(build_builtin("tiny", seed=0), tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def evaluated(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "e"
    evaluate_model(str(model_dir), "all", per_prompt=PER_PROMPT, seed=5, out=out, progress=False, limit=LIMIT)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recompute(results: list[dict], key: str = "correct") -> tuple[float, dict]:
    by_tag = defaultdict(list)
    for r in results:
        by_tag[r["tag"]].append(bool(r[key]))
    tags = {t: sum(v) / len(v) for t, v in by_tag.items()}
    return sum(tags.values()) / len(tags), tags


# ------------------------------------------------------------------------------------------------ contract

def test_summary_json_contract(evaluated):
    summary = json.loads((evaluated / "summary.json").read_text())
    # one key per benchmark, nothing else: the test ones (DPG-shapes among them), the validation ones, understanding
    assert set(summary) == {"geneval", "genevalpp", "dpg", "val_geneval", "val_genevalpp", "understanding"}
    for name, rows in (("geneval", build_geneval("shapes")), ("genevalpp", build_genevalpp("shapes")),
                       ("val_geneval", benchmark_rows("val_geneval")), ("val_genevalpp", benchmark_rows("val_genevalpp"))):
        s = summary[name]
        assert 0.0 <= s["overall"] <= 1.0 and 0.0 <= s["strict_overall"] <= 1.0
        assert list(s["tags"]) == list(dict.fromkeys(r["tag"] for r in rows))  # every tag, in benchmark order
        assert all(0.0 <= v <= 1.0 for v in s["tags"].values())
        assert sum(s["images"].values()) == LIMIT * PER_PROMPT
        # every number is what results.jsonl says
        results = read_jsonl(evaluated / name / "results.jsonl")
        overall, tags = recompute(results)
        assert s["tags"] == pytest.approx(tags, abs=1e-12) and s["overall"] == pytest.approx(overall, abs=1e-12)
        assert s["strict_overall"] == pytest.approx(recompute(results, "correct_strict")[0], abs=1e-12)
    d = summary["dpg"]  # DPG-shapes: the overall and DPG-Bench's five categories, from its results rows
    assert set(d["categories"]) == {"entity", "attribute", "relation", "global", "other"}
    assert d["prompts"] == LIMIT and d["images"] == LIMIT * PER_PROMPT and 0.0 <= d["overall"] <= 1.0
    results = read_jsonl(evaluated / "dpg" / "results.jsonl")
    by_item = defaultdict(list)
    for r in results:
        by_item[r["item"]].append(r["score"])
    assert d["overall"] == pytest.approx(np.mean([np.mean(v) for v in by_item.values()]), abs=1e-12)
    u = summary["understanding"]
    assert {"overall", "by_perturbation", "caption_truthfulness"} <= set(u)
    assert 0.0 <= u["overall"] <= 1.0 and 0.0 <= u["caption_truthfulness"] <= 1.0
    assert u["pairs"] > 0 and u["images"] == LIMIT
    assert u["by_perturbation"] and all(0.0 <= v <= 1.0 for v in u["by_perturbation"].values())


def test_metadata_file_benchmark_is_keyed_file(model_dir, tmp_path):
    rows = build_geneval("shapes")[:3]
    write_metadata(tmp_path / "mine.jsonl", rows)
    out = tmp_path / "e"
    s = evaluate_model(str(model_dir), str(tmp_path / "mine.jsonl"), per_prompt=1, out=out, progress=False)
    saved = json.loads((out / "summary.json").read_text())
    assert set(saved) == {"file"} and set(s) == {"file", "table"}
    assert saved["file"]["images"] == {"single_object": 3}
    assert [s.row for s in read_layout(out / "file")] == rows
    with pytest.raises(ValueError, match="FILE.jsonl"):
        evaluate_model(str(model_dir), "genevl", progress=False)


def test_same_seed_same_summary_and_images(model_dir, evaluated, tmp_path):
    again = tmp_path / "again"
    evaluate_model(str(model_dir), "all", per_prompt=PER_PROMPT, seed=5, out=again, progress=False, limit=LIMIT)
    assert (again / "summary.json").read_bytes() == (evaluated / "summary.json").read_bytes()
    for name in ("geneval", "genevalpp"):
        a, b = read_layout(evaluated / name), read_layout(again / name)
        assert [s.path.relative_to(evaluated) for s in a] == [s.path.relative_to(again) for s in b]
        assert all(np.array_equal(load_image(x.path), load_image(y.path)) for x, y in zip(a, b))
        assert read_jsonl(evaluated / name / "results.jsonl") == read_jsonl(again / name / "results.jsonl")


def test_the_seed_matters(model_dir, evaluated, tmp_path):
    other = tmp_path / "other"
    evaluate_model(str(model_dir), "geneval", per_prompt=PER_PROMPT, seed=6, out=other, progress=False, limit=LIMIT)
    a, b = read_layout(evaluated / "geneval"), read_layout(other / "geneval")
    assert [s.row for s in a] == [s.row for s in b]  # same prompts...
    assert any(not np.array_equal(load_image(x.path), load_image(y.path)) for x, y in zip(a, b))  # ...new draws


# ------------------------------------------------------------------------------------------------ layout and rows

@pytest.mark.parametrize("name", ["geneval", "genevalpp"])
def test_images_in_geneval_layout_and_results_rows(evaluated, name):
    rows = spread(benchmark_rows(name), LIMIT)
    samples = read_layout(evaluated / name)  # results.jsonl beside the prompt folders is ignored, as in GenEval
    assert [(s.index, s.sample_index) for s in samples] == [(i, k) for i in range(LIMIT) for k in range(PER_PROMPT)]
    assert [s.row for s in samples] == [rows[s.index] for s in samples]
    assert all(load_image(s.path).shape == (96, 96, 3) for s in samples)

    results = read_jsonl(evaluated / name / "results.jsonl")
    assert len(results) == len(samples)
    for s, r in zip(samples, results):
        assert GENEVAL_FIELDS <= set(r)
        assert evaluated / name / r["filename"] == s.path
        assert json.loads(r["metadata"]) == s.row and r["prompt"] == s.row["prompt"] and r["tag"] == s.row["tag"]
        assert isinstance(r["correct"], bool) and isinstance(r["reason"], str)
    # judging the written PNGs again gives the same verdicts as judging the images in memory did
    rejudged, _ = judge_folder(evaluated / name, progress=False)
    assert [r["correct"] for r in rejudged] == [r["correct"] for r in results]
    assert [r["reason"] for r in rejudged] == [r["reason"] for r in results]


@pytest.mark.parametrize("bench", ["geneval", "genevalpp", "both"])
def test_spread_keeps_every_tag(bench):
    rows = {"geneval": build_geneval("shapes"), "genevalpp": build_genevalpp("shapes"),
            "both": build_geneval("shapes") + build_genevalpp("shapes")}[bench]
    tags = list(dict.fromkeys(r["tag"] for r in rows))
    for limit in list(range(len(tags), 40)) + [100, len(rows) - 1]:
        got = spread(rows, limit)
        assert len(got) == limit
        assert len({id(r) for r in got}) == limit  # no row twice
        assert {r["tag"] for r in got} == set(tags), limit
        index = {id(r): i for i, r in enumerate(rows)}
        pos = [index[id(g)] for g in got]
        assert pos == sorted(pos)  # benchmark order kept
        for t in tags:  # each tag's share is its proportion, within one row (or the minimum of one)
            share = limit * sum(r["tag"] == t for r in rows) / len(rows)
            n = sum(r["tag"] == t for r in got)
            assert n == 1 or abs(n - share) <= 1.0 + 1e-9, (limit, t, n, share)
    assert spread(rows, None) is rows and spread(rows, len(rows)) is rows


# ------------------------------------------------------------------------------------------------ exact scores

class HalfRightModel:
    """Sample 0 of every prompt is a true scene, sample 1 an empty image: every tag scores exactly 0.5, and any
    mix-up between rows and prompts in the bookkeeping would show."""

    def __init__(self, rows):
        self.rows = {r["prompt"]: r for r in rows}

    def sample(self, prompts, group_size, sampling, generator):
        assert group_size == 2
        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
        toks = []
        for p in prompts:
            toks += [scene_tokens(realise(self.rows[p], rng)), blank_tokens()]
        n = len(toks)
        return Rollout(torch.as_tensor(np.stack(toks)), torch.zeros(n, toks[0].shape[0]),
                       torch.arange(len(prompts)).repeat_interleave(group_size), list(prompts))

    def decode(self, tokens):
        return decode(np.asarray(tokens))


def test_exact_scores_on_a_half_right_model(tmp_path):
    rows = benchmark_rows("genevalpp")
    s = evaluate_model(HalfRightModel(rows), "genevalpp", per_prompt=2, limit=20, out=tmp_path, progress=False)
    g = s["genevalpp"]
    assert g["overall"] == 0.5 and g["strict_overall"] == 0.5
    assert set(g["tags"].values()) == {0.5} and len(g["tags"]) == 7
    results = read_jsonl(tmp_path / "genevalpp" / "results.jsonl")
    assert [r["correct"] for r in results] == [True, False] * 20
