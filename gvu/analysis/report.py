"""The demo report, built ONLY from a run's saved outputs, so any number in it can be recomputed from files.

Inputs under the run folder: eval_before/summary.json, eval_after/summary.json (+ their GenEval-layout image
folders and results.jsonl), train/log.jsonl, sensitivity/sensitivity.json (+ .png), demo.json.
Outputs: report.json (every number), report.md, report.html (pictures inlined as base64).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gvu.analysis.dpg import compare_dpg, markdown_dpg
from gvu.analysis.html import html_page
from gvu.analysis.lead import lead_plot, run_lead, SCORES
from gvu.eval.layout import load_image
from gvu.eval.metadata import atomic_write_text
from gvu.eval import plots
from gvu.world.judge import COLOUR_OUTCOMES, RELATION_OUTCOMES


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _rel(before: float, after: float) -> float | None:
    return None if before == 0 else (after - before) / before


def overall_se(summary: dict) -> float | None:
    """Standard error of an overall score (the unweighted mean of per-tag accuracies) from its images alone:
    sqrt(sum_t p_t (1 - p_t) / n_t) / T, each image a Bernoulli draw. None without per-tag image counts."""
    tags, images = summary.get("tags") or {}, summary.get("images") or {}
    if not tags or any(images.get(t, 0) < 1 for t in tags):
        return None
    return float(sum(p * (1 - p) / images[t] for t, p in tags.items()) ** 0.5 / len(tags))


def tag_variance(p: float, n: int) -> float:
    """Variance of a tag's accuracy p over n images with one success and one failure added (Agresti and Caffo), so a
    tag at 0 or 1 still carries its doubt."""
    q = (p * n + 1) / (n + 2)
    return q * (1 - q) / (n + 2)


def tag_gain_half_width(p_before: float, n_before: int | None, p_after: float | None,
                        n_after: int | None) -> float | None:
    """95% half-width of one tag's gain from its images alone: two independent binomial proportions."""
    if p_after is None or not n_before or not n_after:
        return None
    return 1.96 * (tag_variance(p_before, n_before) + tag_variance(p_after, n_after)) ** 0.5


BENCH_TITLES = {"geneval": "GenEval-shapes", "genevalpp": "GenEval++-shapes",
                "val_geneval": "Validation: GenEval-shapes kinds", "val_genevalpp": "Validation: GenEval++-shapes kinds",
                "file": "Prompt file"}
"""The generation benchmarks a report compares, in order, with their titles (docs/protocol.md: the validation
benchmarks are the ones choices are read from)."""


def compare(before: dict, after: dict) -> dict:
    """Before/after per benchmark: overall (with standard errors and a 95% interval of the gain), per tag (with
    the gain's 95% interval; per category for DPG-shapes: gvu.analysis.dpg), relative change."""
    out = {}
    for bench in BENCH_TITLES:
        if bench in before and bench in after and "tags" in before[bench]:  # a file of dense rows has categories
            b, a = before[bench], after[bench]
            se_b, se_a = overall_se(b), overall_se(a)
            half = None if se_b is None or se_a is None else 1.96 * (se_b ** 2 + se_a ** 2) ** 0.5
            out[bench] = {
                "overall": {"before": b["overall"], "after": a["overall"], "relative": _rel(b["overall"], a["overall"]),
                            "se_before": se_b, "se_after": se_a, "gain": a["overall"] - b["overall"],
                            "gain_ci95_half_width": half},
                "tags": {t: {"before": b["tags"][t], "after": a["tags"].get(t),
                             "gain_ci95_half_width": tag_gain_half_width(
                                 b["tags"][t], b.get("images", {}).get(t), a["tags"].get(t),
                                 a.get("images", {}).get(t))} for t in b["tags"]},
                "images": {t: {"before": b.get("images", {}).get(t), "after": a.get("images", {}).get(t)}
                           for t in b["tags"]},
                "wrapped_fraction": {"before": b.get("wrapped_fraction"), "after": a.get("wrapped_fraction")},
            }
            if b.get("colour_pairs") and a.get("colour_pairs"):
                out[bench]["colour_pairs"] = {"before": b["colour_pairs"], "after": a["colour_pairs"]}
            if b.get("relations") and a.get("relations"):
                out[bench]["relations"] = {rel: {"before": v, "after": a["relations"].get(rel)}
                                           for rel, v in b["relations"].items()}
    if "understanding" in before and "understanding" in after:
        b, a = before["understanding"], after["understanding"]
        out["understanding"] = {
            "overall": {"before": b["overall"], "after": a["overall"], "change": a["overall"] - b["overall"]},
            "by_perturbation": {k: {"before": v, "after": a["by_perturbation"].get(k)}
                                for k, v in b["by_perturbation"].items()},
            "caption_truthfulness": {"before": b.get("caption_truthfulness"), "after": a.get("caption_truthfulness")},
        }
        if "relation_sign" in b and "relation_sign" in a:
            out["understanding"]["relation_sign"] = {k: {"before": v, "after": a["relation_sign"].get(k)}
                                                     for k, v in b["relation_sign"].items() if k != "scenes"}
        if "colour_binding" in b and "colour_binding" in a:
            out["understanding"]["colour_binding"] = {"before": b["colour_binding"]["all"],
                                                      "after": a["colour_binding"]["all"],
                                                      "scenes": b["colour_binding"]["scenes"]}
    return out | compare_dpg(before, after)


QUICK_NOTE = ("--quick checks that the whole pipeline runs, in minutes: its tiny model (300 pretraining steps, 6 GvU "
              "steps) is there to exercise every stage, not to learn, and is expected to score about 0 before and "
              "after (a relative gain from 0 reads n/a). For the measured results run `gvu demo` without --quick (see "
              "the README). DPG-shapes credits every question an image satisfies, so it reads above 0.")
# Why a curve can be empty, written into its panel instead of leaving it blank.
EMPTY_PANELS = {"reward_auc": "no value at any step: the AUC needs correct and incorrect images in one step, and "
                              "every image of every step was judged the same",
                "kl": "not logged: no KL term in this run"}


def _log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _grid(run: Path, bench: str, n: int = 12) -> Path | None:
    """Before/after grid of the same prompts and seeds (sample 0 of the first n prompts)."""
    imgs, oks, caps = [], [], []
    for stage in ("eval_before", "eval_after"):
        res = {r["filename"]: r for r in _log(run / stage / bench / "results.jsonl")}
        row_imgs, row_ok, row_cap = [], [], []
        for i in range(n):
            f = f"{i:05d}/samples/0000.png"
            p = run / stage / bench / f
            if not p.is_file():
                break
            row_imgs.append(load_image(p))
            row_ok.append(res.get(f, {}).get("correct"))
            row_cap.append(res.get(f, {}).get("prompt") or _load_row(p.parent.parent)["prompt"])
        imgs.append(row_imgs)
        oks.append(row_ok)
        caps.append(row_cap)
    k = min(len(imgs[0]), len(imgs[1]))
    if k == 0:
        return None
    return plots.image_grid(imgs[0][:k] + imgs[1][:k], run / f"grid_{bench}.png", captions=caps[0][:k] + caps[1][:k],
                      correct=oks[0][:k] + oks[1][:k], ncols=k, caption_width=20)


def _load_row(prompt_dir: Path) -> dict:
    return json.loads((prompt_dir / "metadata.jsonl").read_text().splitlines()[0])


def build_report(run: str | os.PathLike, oracle: str | os.PathLike | None = None) -> dict:
    """Every number of the report from the run's files; with `oracle` (a run of the same base trained on the
    exact judge's reward), also the fraction of the oracle's gain that this run reaches."""
    run = Path(run)
    before, after = _load(run / "eval_before" / "summary.json"), _load(run / "eval_after" / "summary.json")
    if before is None or after is None:
        raise FileNotFoundError(f"{run} has no eval_before/summary.json and eval_after/summary.json")
    log = _log(run / "train" / "log.jsonl")
    demo = _load(run / "demo.json")
    report = {
        "demo": demo,
        "comparison": compare(before, after),
        "reward": reward_trend([m for m in log if "reward" in m],
                               ((demo or {}).get("demo") or {}).get("reward", "intrinsic")),
        "sensitivity": _load(run / "sensitivity" / "sensitivity.json"),
    }
    if (run / SCORES).is_file() and "geneval" in report["comparison"]:
        report["lead"] = run_lead(run)
    if oracle is not None:
        report["oracle"] = oracle_fraction(report["comparison"], build_report(oracle)["comparison"], oracle)
    return report


def oracle_fraction(ours: dict, oracle: dict, where) -> dict:
    """Per benchmark: our gain, the oracle's gain (same base, same evaluation prompts and seeds), and their ratio."""
    out: dict = {"run": str(where)}
    for bench in ("geneval", "genevalpp"):
        if bench not in ours or bench not in oracle:
            continue
        o, q = ours[bench]["overall"], oracle[bench]["overall"]
        if abs(o["before"] - q["before"]) > 1e-9:
            raise ValueError(f"{where}: its '{bench}' before-score {q['before']:.4f} differs from this run's "
                             f"{o['before']:.4f}; compare runs of the same base and evaluation settings")
        gain, oracle_gain = o["after"] - o["before"], q["after"] - q["before"]
        out[bench] = {"gain": gain, "oracle_gain": oracle_gain, "oracle_after": q["after"],
                      "fraction": gain / oracle_gain if oracle_gain > 0 else None}
    return out


def reward_trend(steps: list[dict], name: str = "intrinsic") -> dict:
    """The training reward (and the intrinsic reward, logged even when an oracle trains) averaged over the first
    and the last tenth of the steps: each step draws new prompts, so single steps are too noisy to compare."""
    n = len(steps)
    w = max(1, n // 10)

    def mean(key, part):
        vals = [m[key] for m in part if m.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    return {"name": name, "steps": n, "window": w,
            "first": mean("reward", steps[:w]), "last": mean("reward", steps[-w:]),
            "intrinsic_first": mean("intrinsic_reward", steps[:w]), "intrinsic_last": mean("intrinsic_reward", steps[-w:])}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _markdown(report: dict, pictures: dict[str, Path]) -> str:
    lines = ["# GvU on the shapes world", ""] + _md_settings(report.get("demo") or {})
    lines += _md_scores(report["comparison"]) + markdown_dpg(report["comparison"].get("dpg"))
    lines += _md_lead(report) + _md_reward(report["reward"]) + _md_oracle(report)
    for name, path in pictures.items():
        lines += [f"## {name}", "", f"![{name}]({path.name})", ""]
    return "\n".join(lines)


def _md_settings(d: dict) -> list[str]:
    lines = []
    if d.get("demo", {}).get("quick"):
        lines += [QUICK_NOTE, ""]
    if d:
        lines += [f"Base: **{d.get('demo', {}).get('base')}**, reward: **{d.get('demo', {}).get('reward')}**, "
                  f"scorer: **{d.get('demo', {}).get('scorer')}**, quick: {d.get('demo', {}).get('quick')}.", ""]
        ev = (d.get("settings") or {}).get("evaluation")
        if ev:
            lines += [f"Before/after evaluation: {ev['per_prompt']} images per prompt, "
                      + (f"{ev['limit']} prompts of each benchmark spread over its tags" if ev.get("limit") else
                         "every prompt of each benchmark") + f", seed {ev['seed']}.", ""]
        if d.get("timings"):
            lines += ["Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in d["timings"].items())
                      + (f"; peak resident memory {d['peak_rss_mib']:.0f} MiB." if d.get("peak_rss_mib") else "."), ""]
        for r in d.get("resumptions") or []:  # the times above: each that of the run that finished the stage
            step = r.get("train_from_step")
            lines += [f"Resumed after an interruption, keeping {', '.join(r.get('kept') or []) or 'no stage'}"
                      + ("" if step is None else f", training from its checkpoint of step {step}") + ".", ""]
    return lines


def _md_scores(c: dict) -> list[str]:
    lines = []
    for bench, title in BENCH_TITLES.items():
        if bench not in c:
            continue
        o = c[bench]["overall"]
        lines += [f"## {title}", "", "| tag | before | after | gain (95% interval) |", "|---|---|---|---|"]
        lines += [f"| {t} | {v['before']:.3f} | {v['after']:.3f} | {_gain(v)} |" for t, v in c[bench]["tags"].items()]
        if o.get("gain_ci95_half_width") is None:
            lines += [f"| **overall** | **{o['before']:.3f}** | **{o['after']:.3f}** ({_pct(o['relative'])}) | |", ""]
        else:
            n = c[bench].get("images", {})
            imgs = sum(v["before"] or 0 for v in n.values())
            lines += [f"| **overall** | **{o['before']:.3f}** ± {o['se_before']:.3f} | **{o['after']:.3f}** ± "
                      f"{o['se_after']:.3f} ({_pct(o['relative'])}) | {_gain(o)} |", "",
                      f"Gain {o['gain']:+.3f}, 95% interval ± {o['gain_ci95_half_width']:.3f} (± is the standard "
                      f"error of the sampled images, {imgs} per evaluation; the before and after images are drawn "
                      "independently).", ""]
        w = c[bench].get("wrapped_fraction") or {}
        if w.get("before") is not None and w.get("after") is not None:
            lines += [f"Images holding a large object wrapped across the row edge (the painter's commonest half-drawn "
                      f"shape, which the detector reads as no object): {w['before']:.1%} before, {w['after']:.1%} after. "
                      "A rise comes with drawing more large objects; `gvu score` tells whether the judge also rewards "
                      "them (docs/bases.md, \"Why some AUCs are low\").", ""]
        lines += _md_relations(c[bench].get("relations") or {})
        lines += _md_colours(c[bench].get("colour_pairs"))
    if "understanding" in c:
        u = c["understanding"]
        lines += ["## Understanding (image-text matching)", "", "| perturbation | before | after |", "|---|---|---|"]
        lines += [f"| {k} | {v['before']:.3f} | {v['after']:.3f} |" for k, v in u["by_perturbation"].items()]
        lines += [f"| **overall** | **{u['overall']['before']:.3f}** | **{u['overall']['after']:.3f}** |",
                  f"| caption truthfulness | {u['caption_truthfulness']['before']:.3f} | "
                  f"{u['caption_truthfulness']['after']:.3f} |"]
        lines += [f"| relation sign: {k} | {v['before']:.3f} | {v['after']:.3f} |"
                  for k, v in u.get("relation_sign", {}).items()]
        if u.get("colour_binding"):
            b = u["colour_binding"]
            lines += [f"| colour binding (true colours above swapped, {b['scenes']} scenes) | {b['before']:.3f} | "
                      f"{b['after']:.3f} |"]
        lines += [""]
    return lines


def _gain(v: dict) -> str:
    """A gain with its 95% interval, marked when the interval excludes zero."""
    if v.get("after") is None:
        return ""
    gain, half = v["after"] - v["before"], v.get("gain_ci95_half_width")
    if half is None:
        return f"{gain:+.3f}"
    return f"{gain:+.3f} ± {half:.3f}" + (" *" if abs(gain) > half else "")


def _md_relations(rels: dict) -> list[str]:
    """How each asked relation came out, before -> after (gvu.world.judge.relation_outcome)."""
    rels = {k: v for k, v in rels.items() if v["before"] and v["after"]}
    if not rels:
        return []
    lines = ["How the relation of a two-object prompt came out (share of its images, before -> after):", "",
             "| asked | " + " | ".join(RELATION_OUTCOMES) + " | images |", "|---" * (len(RELATION_OUTCOMES) + 2) + "|"]
    for rel, v in rels.items():
        b, a = v["before"], v["after"]
        lines.append(f"| {rel} | " + " | ".join(f"{b[k]:.2f} -> {a[k]:.2f}" for k in RELATION_OUTCOMES)
                     + f" | {b['images']} / {a['images']} |")
    return lines + [""]


def _md_colours(pairs: dict | None) -> list[str]:
    """How the colours of two-object, two-colour prompts came out, before -> after (gvu.world.judge.colour_outcome)."""
    if not pairs:
        return []
    b, a = pairs["before"], pairs["after"]
    return ["How the colours of a two-object, two-colour prompt came out (share of its images, before -> after):", "",
            "| " + " | ".join(COLOUR_OUTCOMES) + " | images |", "|---" * (len(COLOUR_OUTCOMES) + 1) + "|",
            "| " + " | ".join(f"{b[k]:.2f} -> {a[k]:.2f}" for k in COLOUR_OUTCOMES) + f" | {b['images']} / {a['images']} |",
            ""]


def _md_lead(report: dict) -> list[str]:
    lines = []
    if report.get("lead"):
        lead = report["lead"]
        corr = lead["auc_gain_correlation"]
        lines += ["## The judge's lead and the gain, per tag", "",
                  "How well the base's own reward ranks its own GenEval-shapes samples (ROC AUC against the exact "
                  "judge; 0.5 = blind) beside the tag's gain. Correlation over tags: "
                  + ("n/a" if corr is None else f"{corr:+.2f}") + ".", "",
                  "| tag | reward AUC (base) | before | after | gain |", "|---|---|---|---|---|"]
        lines += [f"| {t} | {'n/a' if v['auc'] is None else format(v['auc'], '.3f')} | {v['before']:.3f} | "
                  f"{v['after']:.3f} | {v['gain']:+.3f} |" for t, v in lead["tags"].items()]
        lines += [""]
    return lines


def _md_reward(r: dict) -> list[str]:
    lines = []
    if r["steps"]:
        lines += [f"Training reward ({r['name']}), mean of steps 1-{r['window']} -> steps "
                  f"{r['steps'] - r['window'] + 1}-{r['steps']}: {r['first']:.4f} -> {r['last']:.4f}."]
        if r["name"] != "intrinsic" and r["intrinsic_first"] is not None:
            lines += [f"Intrinsic reward (logged, not trained on), same steps: {r['intrinsic_first']:.4f} -> "
                      f"{r['intrinsic_last']:.4f}."]
        lines += [""]
    return lines


def _md_oracle(report: dict) -> list[str]:
    lines = []
    if report.get("oracle"):
        q = report["oracle"]
        lines += ["## Against the oracle", "", f"The oracle run ({q['run']}) trains the same base with the exact "
                  "judge as reward, under the same budget.", "",
                  "| benchmark | gain (this run) | gain (oracle) | fraction of the oracle's gain |", "|---|---|---|---|"]
        for bench, title in (("geneval", "GenEval-shapes"), ("genevalpp", "GenEval++-shapes")):
            if bench in q:
                v = q[bench]
                frac = "n/a" if v["fraction"] is None else f"{100 * v['fraction']:.0f}%"
                lines += [f"| {title} | {v['gain']:+.3f} | {v['oracle_gain']:+.3f} | {frac} |"]
        lines += [""]
    return lines


def write_report(run: str | os.PathLike, oracle: str | os.PathLike | None = None, **demo_info) -> Path:
    run = Path(run)
    if demo_info:
        atomic_write_text(run / "demo.json", json.dumps(demo_info, indent=1) + "\n")
    report = build_report(run, oracle)
    pictures: dict[str, Path] = {}
    log = _log(run / "train" / "log.jsonl")
    if log:
        keys = [k for k in ("reward", "accuracy", "reward_auc", "kl", "eval_geneval", "eval_genevalpp", "eval_dpg",
                            "eval_val_geneval", "eval_val_genevalpp", "eval_understanding") if any(k in m for m in log)]
        pictures["Reward and evaluation over training steps"] = plots.metrics_plot(log, keys, run / "curves.png",
                                                                              empty_notes=EMPTY_PANELS)
    for bench in ("geneval", "genevalpp"):
        g = _grid(run, bench)
        if g is not None:
            pictures[f"{bench}: before (top) and after (bottom), same prompts and seeds; green = correct"] = g
    if report.get("lead"):
        pictures["The judge's lead against the gain, per tag"] = lead_plot({run.name: report["lead"]},
                                                                           run / "lead.png")
    sens_png = run / "sensitivity" / "sensitivity.png"
    if sens_png.is_file():
        pictures["Sensitivity of the reward to removed descriptors"] = sens_png
    atomic_write_text(run / "report.json", json.dumps(report, indent=1) + "\n")
    md = _markdown(report, {k: v.relative_to(run) if v.is_relative_to(run) else v for k, v in pictures.items()})
    atomic_write_text(run / "report.md", md.replace("](sensitivity.png)", "](sensitivity/sensitivity.png)"))
    atomic_write_text(run / "report.html", html_page(md, pictures))
    return run / "report.md"
