"""The understanding benchmark: the shapes-world analogue of the paper's fine-grained understanding tests.

Images are ground-truth renders of the GenEval-shapes and GenEval++-shapes prompts (one scene each, fixed
seed), so the benchmark measures understanding alone, not the model's own drawing.

- Image-text matching: each image's true prompt against hard negatives built through the grammar by
  changing one fact of its metadata (a colour, a count by one, a relation or region or size flipped, an
  object swapped for one not in the image), and, for prompts with two regions, both regions swapped at once
  ("placement": the one negative that no prior over sentences can rule out); a negative is kept only if the
  judge finds it false on the image.
  The model "chooses" by its own prompt log-likelihood (sum over the prompt's tokens). Accuracy is over
  (image, negative) pairs, overall and per perturbation type.
- Relation sign and colour binding: on ground-truth scenes, the true prompt against the same words with the
  relation flipped, or with the two objects' colours swapped (`relation_sign`, `colour_binding`).
- Caption truthfulness: a greedy caption, parsed by the grammar and judged on the image in strict mode
  (a caption the grammar cannot parse counts as false).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from gvu.eval.prompts import build_geneval, build_genevalpp, spread
from gvu.world import spec
from gvu.world.grammar import GrammarError, parse_prompt, render_prompt, SHAPES_LEXICON
from gvu.world.judge import evaluate, FLIPPED
from gvu.world.kinds import swap_colours
from gvu.world.scene import Obj, realise, scene_detections, scene_tokens

PERTURBATIONS = ("color", "count", "relation", "object", "placement")
_FLIP = {**FLIPPED, "left": "right", "right": "left", "larger": "smaller", "smaller": "larger"}


def _finish(row: dict) -> dict:
    row = copy.deepcopy(row)
    if row["tag"] == "counting":
        it = row["include"][0]
        row["exclude"] = [{"class": it["class"], "count": it["count"] + 1}]
    row["prompt"] = render_prompt(row, SHAPES_LEXICON)
    return row


def _relation_flips(row: dict, i: int):
    """Copies of `row` with item i's position, region or size flipped, in that order."""
    it = row["include"][i]
    for key in ("position", "region", "size"):
        if key in it:
            neg = copy.deepcopy(row)
            if key == "position":
                neg["include"][i]["position"] = [_FLIP[it["position"][0]], it["position"][1]]
            elif key == "region":
                neg["include"][i]["region"] = _FLIP[it["region"]]
            else:  # both sizes flip together, or the prompt would say two larger objects
                for item in neg["include"]:
                    if "size" in item:
                        item["size"] = _FLIP[item["size"]]
            yield neg


def negatives(row: dict, objs: list[Obj], rng: np.random.Generator) -> dict[str, dict]:
    """At most one hard negative per perturbation type, each false on the scene."""
    dets = scene_detections(objs)
    present = {o.cls for o in objs}
    out: dict[str, dict] = {}
    items = list(range(len(row["include"])))
    rng.shuffle(items)

    def keep(kind: str, neg: dict) -> bool:
        neg = _finish(neg)
        if not evaluate(dets, neg, "strict").correct and neg["prompt"] != row["prompt"]:
            out[kind] = neg
            return True
        return False

    for i in items:
        it = row["include"][i]
        if "color" in it and "color" not in out:
            for c in rng.permutation(spec.COLORS):
                neg = copy.deepcopy(row)
                neg["include"][i]["color"] = str(c)
                if c != it["color"] and keep("color", neg):
                    break
        if "count" not in out and (row["tag"] not in ("single_object", "two_object", "colors", "position",
                                                      "color_attr", "color_spatial_attr", "size_spatial_attr")):
            for d in rng.permutation([-1, 1]):
                if it["count"] + d >= 1:
                    neg = copy.deepcopy(row)
                    neg["include"][i]["count"] = it["count"] + int(d)
                    if keep("count", neg):
                        break
        if "relation" not in out:
            for neg in _relation_flips(row, i):
                if keep("relation", neg):
                    break
        if "object" not in out:
            others = [c for c in spec.SHAPES if c not in present]
            if others:
                neg = copy.deepcopy(row)
                neg["include"][i]["class"] = str(others[rng.integers(len(others))])
                keep("object", neg)
    # "relation" flips one region, so "a circle on the left and a star on the left" can be ruled out by language
    # alone (regions in prompts are mostly opposite); "placement" swaps every region at once, which only reading
    # where things are can rule out.
    if sum("region" in it for it in row["include"]) >= 2:
        neg = copy.deepcopy(row)
        for it in neg["include"]:
            if "region" in it:
                it["region"] = _FLIP[it["region"]]
        keep("placement", neg)
    return out


@dataclass
class UnderstandingSet:
    rows: list[dict]
    objs: list[list[Obj]]
    tokens: np.ndarray  # [M, T]
    negatives: list[dict[str, dict]]


def build_understanding_set(seed: int = 0, limit: int | None = None) -> UnderstandingSet:
    rows = spread(build_geneval("shapes") + build_genevalpp("shapes"), limit)
    rng = np.random.default_rng([seed, 7])
    objs = [realise(r, rng) for r in rows]
    negs = [negatives(r, o, rng) for r, o in zip(rows, objs)]
    return UnderstandingSet(rows, objs, np.stack([scene_tokens(o) for o in objs]), negs)


@torch.no_grad()
def sequence_logprob(model, tokens_NT: torch.Tensor, prompts: list[str], batch_size: int = 128) -> np.ndarray:
    """Sum of the prompt's token log-probs given each image (the model's own likelihood)."""
    out = []
    for s in range(0, len(prompts), batch_size):
        logp, mask = model.prompt_logprobs(tokens_NT[s:s + batch_size], prompts[s:s + batch_size])
        out.append((logp * mask).sum(-1).float().cpu().numpy())
    return np.concatenate(out)


RELATIONS = ("left of", "right of", "above", "below")


def _true_above(model, rows: list[dict], negative, rng: np.random.Generator, scenes_per_prompt: int,
                batch_size: int) -> np.ndarray:
    """Per ground-truth scene (`scenes_per_prompt` of each row), whether the row's prompt scores above
    `negative(row)`'s on the same image: the probes below differ only in the negative."""
    tokens, true_p, neg_p = [], [], []
    for row in rows:
        neg = _finish(negative(copy.deepcopy(row)))
        for _ in range(scenes_per_prompt):
            tokens.append(scene_tokens(realise(row, rng)))
            true_p.append(row["prompt"])
            neg_p.append(neg["prompt"])
    toks = torch.as_tensor(np.stack(tokens))
    return sequence_logprob(model, toks, true_p, batch_size) > sequence_logprob(model, toks, neg_p, batch_size)


def relation_sign(model, seed: int = 0, scenes_per_prompt: int = 4, batch_size: int = 128,
                  limit: int | None = None) -> dict:
    """The sign of a two-object relation: on ground-truth scenes of GenEval-shapes' position prompts
    (`scenes_per_prompt` scenes each, realised with their own seed), how often the true prompt scores above the
    same prompt with its relation flipped (left of <-> right of, above <-> below): same image, same words but one,
    so only reading where the objects are can decide. Per relation and overall, with the number of scenes."""
    rows = [r for r in build_geneval("shapes") if r["tag"] == "position"][:limit]

    def flip(row):
        rel, other = row["include"][1]["position"]
        row["include"][1]["position"] = [_FLIP[rel], other]
        return row

    wins = _true_above(model, rows, flip, np.random.default_rng([seed, 11]), scenes_per_prompt, batch_size)
    rels = np.repeat([r["include"][1]["position"][0] for r in rows], scenes_per_prompt)
    out = {r: float(wins[rels == r].mean()) for r in RELATIONS if (rels == r).any()}
    out["all"] = float(wins.mean())
    out["scenes"] = int(len(wins))
    return out


def colour_binding(model, seed: int = 0, scenes_per_prompt: int = 2, batch_size: int = 128,
                   limit: int | None = None) -> dict:
    """Which colour goes with which shape: on ground-truth scenes of GenEval-shapes' colour-attribute prompts (two
    objects, two colours; `scenes_per_prompt` each, realised with their own seed), how often the true prompt scores
    above the same prompt with the two colours swapped ("a red circle and a blue square" against "a blue circle and
    a red square"): same image, same words in another order, so only binding each colour to its shape can decide.
    A judge that reads binding this poorly cannot reward it (docs/results.md)."""
    rows = [r for r in build_geneval("shapes") if r["tag"] == "color_attr"][:limit]

    wins = _true_above(model, rows, swap_colours, np.random.default_rng([seed, 13]), scenes_per_prompt, batch_size)
    return {"all": float(wins.mean()), "scenes": int(len(wins))}


def run_understanding(model, uset: UnderstandingSet | None = None, batch_size: int = 128,
                      captions: bool = True, sign_scenes_per_prompt: int = 4, sign_limit: int | None = None) -> dict:
    uset = uset or build_understanding_set()
    toks = torch.as_tensor(uset.tokens)
    true_lp = sequence_logprob(model, toks, [r["prompt"] for r in uset.rows], batch_size)
    pair_img, pair_kind, pair_prompt = [], [], []
    for i, negs in enumerate(uset.negatives):
        for kind, neg in negs.items():
            pair_img.append(i)
            pair_kind.append(kind)
            pair_prompt.append(neg["prompt"])
    neg_lp = sequence_logprob(model, toks[pair_img], pair_prompt, batch_size)
    wins = true_lp[pair_img] > neg_lp
    kinds = np.array(pair_kind)
    result = {
        "overall": float(wins.mean()),
        "by_perturbation": {k: float(wins[kinds == k].mean()) for k in PERTURBATIONS if (kinds == k).any()},
        "pairs": int(len(wins)),
        "images": len(uset.rows),
    }
    if sign_scenes_per_prompt:
        result["relation_sign"] = relation_sign(model, scenes_per_prompt=sign_scenes_per_prompt,
                                                batch_size=batch_size, limit=sign_limit)
        result["colour_binding"] = colour_binding(model, scenes_per_prompt=max(1, sign_scenes_per_prompt // 2),
                                                  batch_size=batch_size, limit=sign_limit)
    if captions:
        texts = []
        for s in range(0, len(toks), batch_size):
            texts += model.caption(toks[s:s + batch_size])
        truthful = []
        for text, objs in zip(texts, uset.objs):
            try:
                row = parse_prompt(text, SHAPES_LEXICON)
                truthful.append(evaluate(scene_detections(objs), row, "strict").correct)
            except GrammarError:
                truthful.append(False)
        result["caption_truthfulness"] = float(np.mean(truthful))
        result["caption_examples"] = texts[:5]
    return result
