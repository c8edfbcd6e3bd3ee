"""The understanding benchmark: hard negatives are false and change exactly one kind of fact, the set is
deterministic, and the metrics reach their ceiling on a stub model that knows every true prompt (and their
floor on one that prefers the negatives), so a score from a real model means what it says."""

import numpy as np
import pytest
import torch

from gvu.eval.prompts import build_geneval
from gvu.eval.understanding import (PERTURBATIONS, build_understanding_set, negatives, relation_sign,
                                     run_understanding, sequence_logprob)
from gvu.models.builtin.model import build_builtin
from gvu.world import spec
from gvu.world.grammar import SHAPES_LEXICON, parse_prompt
from gvu.world.judge import evaluate
from gvu.world.scene import scene_detections

LIMIT = 150
COUNTED_TAGS = {"counting", "spatial_count_attr", "color_count_attr", "multi_object_count_attr"}
FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above", "left": "right",
        "right": "left", "larger": "smaller", "smaller": "larger"}


@pytest.fixture(scope="module")
def uset():
    return build_understanding_set(seed=0, limit=LIMIT)


def changes(true: dict, neg: dict) -> set[tuple[int, str]]:
    """(item, field) pairs where the include lists of two parsed prompts differ."""
    a, b = true["include"], neg["include"]
    assert len(a) == len(b)
    out = set()
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys(), (x, y)
        out |= {(i, k) for k in x if x[k] != y[k]}
    return out


# ------------------------------------------------------------------------------------------------ negatives

def test_negatives_are_false_and_differ_from_the_true_prompt(uset):
    for row, objs, negs in zip(uset.rows, uset.objs, uset.negatives):
        dets = scene_detections(objs)
        assert evaluate(dets, row, "strict").correct  # the image shows the true prompt...
        for kind, neg in negs.items():
            assert kind in PERTURBATIONS
            assert neg["prompt"] != row["prompt"]
            assert not evaluate(dets, neg, "strict").correct, (row["prompt"], neg["prompt"])  # ...not the negative
            # the text the model scores says exactly what the metadata says
            assert parse_prompt(neg["prompt"], SHAPES_LEXICON)["include"] == neg["include"]


def test_each_negative_changes_exactly_what_its_type_says(uset):
    seen = {k: 0 for k in PERTURBATIONS}
    for row, objs, negs in zip(uset.rows, uset.objs, uset.negatives):
        true = parse_prompt(row["prompt"], SHAPES_LEXICON)
        present = {o.cls for o in objs}
        for kind, neg in negs.items():
            seen[kind] += 1
            parsed = parse_prompt(neg["prompt"], SHAPES_LEXICON)
            diff = changes(true, parsed)
            fields = {k for _, k in diff}
            if kind == "color":
                assert len(diff) == 1 and fields == {"color"}
                (i, _), = diff
                assert parsed["include"][i]["color"] in spec.COLORS
            elif kind == "count":
                assert len(diff) == 1 and fields == {"count"} and row["tag"] in COUNTED_TAGS
                (i, _), = diff
                assert abs(parsed["include"][i]["count"] - true["include"][i]["count"]) == 1
                assert parsed["include"][i]["count"] >= 1
            elif kind == "relation":
                assert diff and fields <= {"position", "region", "size"}
                for i, k in diff:
                    old, new = true["include"][i][k], parsed["include"][i][k]
                    if k == "position":
                        assert new == [FLIP[old[0]], old[1]]  # flipped, same reference object
                    else:
                        assert new == FLIP[old]
                if fields == {"size"}:  # both sizes flip together ("larger" and "smaller" swap)
                    assert len(diff) == 2
                else:
                    assert len(diff) == 1
            elif kind == "placement":  # every region flipped at once, nothing else
                regions = [i for i, it in enumerate(true["include"]) if "region" in it]
                assert len(regions) >= 2 and fields == {"region"} and sorted(i for i, _ in diff) == regions
                assert all(parsed["include"][i]["region"] == FLIP[true["include"][i]["region"]] for i in regions)
            else:  # object: one class swapped for a shape that is not in the image at all
                assert len(diff) == 1 and fields == {"class"}
                (i, _), = diff
                assert parsed["include"][i]["class"] not in present
    assert all(n >= 10 for n in seen.values()), seen  # every type is exercised


def test_negatives_on_a_hand_scene():
    """Two hearts, both yellow, and a white star: counted prompts get every type of negative."""
    from gvu.world.scene import Obj

    objs = [Obj("heart", "yellow", "small", 0, 0), Obj("heart", "yellow", "small", 0, 2),
            Obj("star", "white", "small", 4, 4)]
    row = {"tag": "color_count_attr", "include": [{"class": "heart", "count": 2, "color": "yellow"},
                                                  {"class": "star", "count": 1, "color": "white"}],
           "prompt": "a photo of two yellow hearts and one white star"}
    assert evaluate(scene_detections(objs), row, "strict").correct
    negs = negatives(row, objs, np.random.default_rng(0))
    assert set(negs) == {"color", "count", "object"}  # no relation in this template
    for neg in negs.values():
        assert not evaluate(scene_detections(objs), neg, "strict").correct
    assert negs["count"]["include"][0]["count"] in (1, 3) or negs["count"]["include"][1]["count"] == 2
    swapped = [it["class"] for it in negs["object"]["include"] if it["class"] not in ("heart", "star")]
    assert len(swapped) == 1


def test_build_understanding_set_is_deterministic(uset):
    again = build_understanding_set(seed=0, limit=LIMIT)
    assert again.rows == uset.rows and again.negatives == uset.negatives and again.objs == uset.objs
    assert np.array_equal(again.tokens, uset.tokens)
    other = build_understanding_set(seed=1, limit=LIMIT)
    assert other.rows == uset.rows and not np.array_equal(other.tokens, uset.tokens)  # the seed draws the scenes


# ------------------------------------------------------------------------------------------------ metrics

def test_run_understanding_on_the_tiny_model(uset):
    model = build_builtin("tiny", seed=0)
    r = run_understanding(model, uset, batch_size=64)
    assert r["pairs"] == sum(len(n) for n in uset.negatives) > 0 and r["images"] == LIMIT
    assert 0.0 <= r["overall"] <= 1.0 and 0.0 <= r["caption_truthfulness"] <= 1.0
    assert set(r["by_perturbation"]) == set(PERTURBATIONS)
    assert all(0.0 <= v <= 1.0 for v in r["by_perturbation"].values())
    # the overall is over pairs: the per-type accuracies weighted by their pair counts
    counts = {k: sum(k in n for n in uset.negatives) for k in PERTURBATIONS}
    assert r["overall"] == pytest.approx(sum(r["by_perturbation"][k] * counts[k] for k in counts) / r["pairs"])
    assert len(r["caption_examples"]) == 5
    # the likelihood used to choose is the model's own: the sum of its per-token log-probs
    toks = torch.as_tensor(uset.tokens[:3])
    prompts = [row["prompt"] for row in uset.rows[:3]]
    logp, mask = model.prompt_logprobs(toks, prompts)
    assert np.allclose(sequence_logprob(model, toks, prompts), (logp * mask).sum(-1).detach().numpy(), atol=1e-5)


class OracleModel:
    """Knows the true prompt of every image in the set: log-prob 0 for it, -10 (per token) for anything else;
    captions with it. With `wrong=True`, the opposite: it prefers every other prompt and captions a negative."""

    def __init__(self, uset, wrong: bool = False):
        self.truth = {}
        for toks, row, negs in zip(uset.tokens, uset.rows, uset.negatives):
            self.truth.setdefault(toks.tobytes(), set()).add(row["prompt"])
        self.negative = {toks.tobytes(): next(iter(negs.values()))["prompt"] if negs else "a photo of"
                         for toks, negs in zip(uset.tokens, uset.negatives)}
        self.wrong = wrong

    def _key(self, toks) -> bytes:
        return np.asarray(toks, dtype=np.int64).tobytes()

    def prompt_logprobs(self, images, prompts, instruction="Describe the image in detail."):
        L = max(len(p.split()) for p in prompts)
        logp, mask = torch.zeros(len(prompts), L), torch.zeros(len(prompts), L)
        for i, (img, p) in enumerate(zip(images.numpy(), prompts)):
            n = len(p.split())
            mask[i, :n] = 1
            true = p in self.truth[self._key(img)]
            logp[i, :n] = 0.0 if true != self.wrong else -10.0
        return logp, mask.bool()

    def caption(self, images, instruction="Describe the image in detail."):
        out = []
        for img in images.numpy():
            k = self._key(img)
            out.append(self.negative[k] if self.wrong else sorted(self.truth[k])[0])
        return out


def test_metrics_reach_their_ceiling_and_floor(uset):
    best = run_understanding(OracleModel(uset), uset, sign_scenes_per_prompt=0)
    assert best["overall"] == 1.0 and best["caption_truthfulness"] == 1.0
    assert best["by_perturbation"] == {k: 1.0 for k in PERTURBATIONS}
    worst = run_understanding(OracleModel(uset, wrong=True), uset, sign_scenes_per_prompt=0)
    # negatives are false on their image, and an unparseable caption ("a photo of") counts as false
    assert worst["overall"] == 0.0 and worst["caption_truthfulness"] == 0.0
    assert worst["by_perturbation"] == {k: 0.0 for k in PERTURBATIONS}


def test_ties_are_not_wins(uset):
    """A model that cannot tell prompts apart (equal likelihoods) scores 0, not 0.5 or 1."""

    class Indifferent(OracleModel):
        def prompt_logprobs(self, images, prompts, instruction=""):
            return torch.zeros(len(prompts), 1), torch.ones(len(prompts), 1, dtype=torch.bool)

    r = run_understanding(Indifferent(uset), uset, captions=False, sign_scenes_per_prompt=0)
    assert r["overall"] == 0.0 and "caption_truthfulness" not in r


class FixedWords:
    """Prefers one word of each axis whatever the image: "left" over "right", "below" over "above"."""

    def prompt_logprobs(self, images, prompts, instruction="Describe the image in detail."):
        score = torch.tensor([[1.0 * ("left" in p) + 1.0 * ("below" in p)] for p in prompts])
        return score, torch.ones_like(score, dtype=torch.bool)


def test_relation_sign_counts_each_relation_against_its_flip():
    r = relation_sign(FixedWords(), scenes_per_prompt=2)
    assert (r["left of"], r["right of"], r["above"], r["below"]) == (1.0, 0.0, 0.0, 1.0)
    assert r["scenes"] == 2 * sum(1 for row in build_geneval("shapes") if row["tag"] == "position")
    assert abs(r["all"] - 0.5) < 0.15  # the four relations are about equally frequent among GenEval's prompts
    assert relation_sign(FixedWords(), scenes_per_prompt=1, limit=3)["scenes"] == 3


class ColourOrder:
    """Prefers the prompt whose first colour word comes first in the palette's order, whatever the image."""

    def prompt_logprobs(self, images, prompts, instruction="Describe the image in detail."):
        from gvu.world.spec import COLORS

        def first(p):
            return min((p.index(c), c) for c in COLORS if f" {c} " in f" {p} ")[1]

        score = torch.tensor([[-float(COLORS.index(first(p)))] for p in prompts])
        return score, torch.ones_like(score, dtype=torch.bool)


def test_colour_binding_counts_the_true_colours_against_the_swapped_ones():
    from gvu.eval.understanding import colour_binding
    from gvu.world.spec import COLORS

    rows = [r for r in build_geneval("shapes") if r["tag"] == "color_attr"]
    # the order-preferring stub wins exactly where the true prompt names the earlier palette colour first
    expected = np.mean([COLORS.index(r["include"][0]["color"]) < COLORS.index(r["include"][1]["color"])
                        for r in rows])
    r = colour_binding(ColourOrder(), scenes_per_prompt=2)
    assert r["scenes"] == 2 * len(rows) and r["all"] == pytest.approx(expected)
    assert 0.2 < r["all"] < 0.8  # the stub is no judge: about half
    assert colour_binding(FixedWords(), scenes_per_prompt=1, limit=5) == {"all": 0.0, "scenes": 5}  # ties lose
