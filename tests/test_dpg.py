"""DPG-Bench: the dense prompts of the shapes world (DPG-shapes) and their question graphs, the exact judge on them
(ground truth scores 1, shuffled prompts do not, one wrong attribute fails exactly its question and what depends on
it), DPG-Bench's own prompt files (checked against a checksum), its question file's columns, its scoring rules
against numbers its official script printed, and its 2x2 layout from `gvu generate --dpg`."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gvu.cli import main as gvu_main
from gvu.eval import dpg
from gvu.eval.check import read_checked
from gvu.eval.dpg_shapes import build_dpg, judge_answers, judge_folder, N_PROMPTS
from gvu.eval.metadata import MetadataError, write_metadata
from gvu.models.builtin.model import builtin_layout, build_builtin, save_builtin
from gvu.models.builtin.tokenizer import WordTokenizer
from gvu.models.protocol import DEFAULT_INSTRUCTION
from gvu.world.detect import detect
from gvu.world.dense import answer, DPG_TAG, MAX_PROMPT_TOKENS, prompt_tokens, Question, questions, realise_dense
from gvu.world.render import decode
from gvu.world.scene import scene_tokens
from gvu.world.spec import COLORS, NUM_TOKENS

ROOT = Path(__file__).resolve().parents[1]
BASES = ("regular", "weak", "regular-flat")
GVU = [sys.executable, "-m", "gvu.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return build_dpg()


def pixels(objs) -> np.ndarray:
    return decode(scene_tokens(objs))


# ----------------------------------------------------------------------------------------------- DPG-shapes

def test_dense_prompts_are_in_every_shipped_base_s_words_and_positions(rows):
    assert len(rows) == N_PROMPTS >= 200 and len({r["prompt"] for r in rows}) == len(rows)
    for base in BASES:
        tok = WordTokenizer.load(ROOT / "bases" / base)
        layout = builtin_layout(tok)
        positions = json.loads((ROOT / "bases" / base / "config.json").read_text())["max_position_embeddings"]
        codes = np.zeros(NUM_TOKENS, dtype=int)
        for r in rows:
            ids = tok.encode(r["prompt"])  # an unknown word raises
            und, _ = layout.understanding_sequence(codes, tok.encode(DEFAULT_INSTRUCTION), ids)
            assert len(und) <= positions and len(layout.generation_sequence(ids, codes)) <= positions
    assert max(len(prompt_tokens(r["prompt"])) for r in rows) <= MAX_PROMPT_TOKENS


def test_dense_prompts_carry_counts_colours_sizes_regions_relations_and_a_graph(rows):
    for r in rows:
        inc = r["include"]
        assert r["tag"] == DPG_TAG and 3 <= len(inc) <= 6 and len({it["class"] for it in inc}) == len(inc)
        assert any("position" in it for it in inc) and r["prompt"].count(".") >= 2  # several sentences
        qs = questions(r)
        assert [q.qid for q in qs] == list(range(1, len(qs) + 1))
        assert all(p < q.qid for q in qs for p in q.parents)  # every parent before its child
    for key in ("color", "size", "region"):
        assert sum(any(key in it for it in r["include"]) for r in rows) > len(rows) // 4, key
    assert sum(any(it["count"] > 1 for it in r["include"]) for r in rows) > len(rows) // 2
    asked = {q.l1 for r in rows for q in questions(r)}
    assert asked == set(dpg.L1_CATEGORIES)


def test_the_prompt_files_check_and_read_back(rows, tmp_path):
    assert gvu_main(["prompts", "dpg", "--world", "shapes", "-n", "12", "--out", str(tmp_path)]) == 0
    back = read_checked(tmp_path / "evaluation_metadata.jsonl")  # the world's checks, dense rows included
    assert back == rows[:12]
    items = dpg.read_questions(tmp_path / "dpg_bench.csv")
    assert list(items) == [f"shapes_{i:05d}" for i in range(12)]
    assert [list(i.questions) for i in items.values()] == [questions(r) for r in rows[:12]]
    prompts = dpg.read_prompt_folder(tmp_path / "prompts")
    assert [t for _, t in prompts] == [r["prompt"] for r in rows[:12]]
    with open(tmp_path / "dpg_bench.csv", newline="") as fp:
        first = next(csv.DictReader(fp))
    assert (first["category_broad"], first["category_detailed"], first["dependency"]) == ("entity", "whole", "0")

    bad = dict(rows[0], include=rows[0]["include"] + [dict(rows[0]["include"][0])])  # one shape named twice
    write_metadata(tmp_path / "bad.jsonl", [rows[1], bad])
    with pytest.raises(MetadataError, match=r"bad.jsonl:2: .*each shape once"):
        read_checked(tmp_path / "bad.jsonl")
    write_metadata(tmp_path / "lie.jsonl", [dict(rows[0], prompt=rows[1]["prompt"])])
    with pytest.raises(MetadataError, match=r"lie.jsonl:1: .*does not say"):
        read_checked(tmp_path / "lie.jsonl")


@pytest.mark.slow  # three fresh interpreters, 400 renders judged twice: about 20 s on two busy cores
def test_ground_truth_scores_one_and_shuffled_prompts_do_not(tmp_path):
    """`gvu prompts dpg`, `gvu world render`, `gvu judge` as a user runs them; then every image judged against
    another prompt's question graph."""
    run = [("prompts", "dpg", "--world", "shapes", "--out", tmp_path / "set"),
           ("world", "render", "--metadata", tmp_path / "set" / "evaluation_metadata.jsonl", "--outdir",
            tmp_path / "gt", "--per-prompt", "2")]
    for args in run:
        p = subprocess.run([*GVU, *map(str, args)], capture_output=True, text=True, env=ENV)
        assert p.returncode == 0, p.stderr
    p = subprocess.run([*GVU, "judge", str(tmp_path / "gt"), "--out", str(tmp_path / "r.jsonl")], capture_output=True,
                       text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    assert "DPG-shapes, 400 images" in p.stdout and f"  {'overall':<9}   1.000 ± 0.000" in p.stdout
    for cat in dpg.L1_CATEGORIES:
        assert f"  {cat:<9}   1.000" in p.stdout
    results, summary = judge_folder(tmp_path / "gt", progress=False)
    assert summary["overall"] == 1.0 and summary["all_yes"] == 1.0 and summary["prompts"] == 200

    metas = sorted((tmp_path / "gt").glob("*/metadata.jsonl"))
    texts = [m.read_text() for m in metas]
    for k, m in enumerate(metas):  # each folder takes the next one's prompt
        m.write_text(texts[(k + 1) % len(texts)])
    _, shuffled = judge_folder(tmp_path / "gt", progress=False)
    assert shuffled["overall"] < 0.6 and shuffled["all_yes"] == 0.0


def answer_pixels(objs, qs) -> dict[int, bool]:
    return answer(detect(pixels(objs)), qs)


def failing(objs, qs) -> tuple[set[int], set[int]]:
    """The questions one image fails, before and after DPG's parent rule."""
    raw = answer_pixels(objs, qs)
    after = dpg.parent_rule(qs, {k: float(v) for k, v in raw.items()})
    return {k for k, v in raw.items() if not v}, {k for k, v in after.items() if v == 0}


def descendants(qs: list[Question], root: int) -> set[int]:
    out = {root}
    for q in qs:  # parents come first, so one pass collects every generation
        if out & set(q.parents):
            out.add(q.qid)
    return out


def test_one_wrong_attribute_fails_exactly_that_question_and_its_dependents(rows):
    rng = np.random.default_rng(0)
    checked = {"color": 0, "entity": 0, "count": 0}
    for row in rows[:40]:
        qs = questions(row)
        objs = realise_dense(row, rng)
        assert all(answer_pixels(objs, qs).values())
        for it in row["include"]:
            mine = [o for o in objs if o.cls == it["class"]]
            entity = next(q.qid for q in qs if q.proposition == f"entity - whole ({it['class']})")
            if "color" in it:  # one object of the shape in another colour
                other = next(c for c in COLORS if c != it["color"])
                wrong = [o if o is not mine[0] else type(o)(o.cls, other, o.size, o.row, o.col) for o in objs]
                q = next(q.qid for q in qs if q.proposition.startswith(f"attribute - color ({it['class']},"))
                assert failing(wrong, qs) == ({q}, {q})
                checked["color"] += 1
            if it["count"] > 1:  # one object fewer: the count alone
                q = next(q.qid for q in qs if q.proposition.startswith(f"other - count ({it['class']},"))
                assert failing([o for o in objs if o is not mine[-1]], qs) == ({q}, {q})
                checked["count"] += 1
            # the shape left out: its entity question, and every question that depends on it
            raw, after = failing([o for o in objs if o.cls != it["class"]], qs)
            assert raw == after == descendants(qs, entity) and len(after) > 1
            checked["entity"] += 1
    assert min(checked.values()) >= 20


# ------------------------------------------------------------------------------------- DPG-Bench's own files

PROMPTS_SHA256 = "a56a07afb10eeffdf86b3f33e26467cfd9497eda84905839af7d13a09d940eff"  # ELLA 3c228f1, dpg_bench/prompts


def test_the_published_prompts_ship_as_published(tmp_path):
    prompts = dpg.published_prompts()
    assert len(prompts) == dpg.PUBLISHED_PROMPTS == 1065
    assert dpg.prompts_checksum(prompts) == PROMPTS_SHA256 == dpg.PROMPTS_SHA256
    assert (ROOT / "gvu" / "eval" / "data" / "dpg" / "LICENSE").read_text().strip().startswith("Apache License")
    assert gvu_main(["prompts", "dpg", "--world", "coco", "--out", str(tmp_path)]) == 0
    written = {p.stem: p.read_bytes() for p in (tmp_path / "prompts").iterdir()}
    assert dpg.prompts_checksum(written) == PROMPTS_SHA256 and not (tmp_path / "dpg_bench.csv").exists()


# the official script's numbers: ELLA's dpg_bench/compute_dpg_bench.py (commit 3c228f1) run on these files with
# --resolution 4 --pic-num 4, its mPLUG answerer replaced by the stub below (answers by crop colour and question)
ROWS = [
    ("a", 1, "0", "entity - whole (cat)", "a: is there a cat?"),
    ("a", 2, "0", "global - (photo)", "a: is it a photo?"),
    ("a", 3, "0", "entity - whole (dog)", "a: is there a dog?"),
    ("a", 4, "3", "attribute - color (dog, brown)", "a: is the dog brown?"),
    ("b", 1, "0", "entity - whole (bird)", "b: is there a bird?"),
    ("b", 2, "1", "other - count (bird, ==2)", "b: are there two birds?"),
    ("b", 3, "2", "attribute - color (bird, red)", "b: are the birds red?"),
    ("b", 4, "0", "entity - whole (tree)", "b: is there a tree?"),
    ("b", 5, "1,4", "relation - spatial (bird, tree, on)", "b: are the birds on the tree?"),
    ("b", 6, "7", "attribute - size (tree, tall)", "b: is the tree tall?"),
    ("b", 7, "4", "entity - part (tree, leaves)", "b: does the tree have leaves?"),
    ("c", 1, "0", "entity - whole (car)", "c: is there a car?"),
    ("c", 2, "1", 'other - text (car, "taxi, yellow")', "c: does the car say taxi?"),
    ("c", 3, "0", "global - (night)", "c: is it night?"),
]
YES = {"a": [{1, 2, 3, 4}, {2}, {3}, {2, 3, 4}],  # per crop (top-left, top-right, bottom-left, bottom-right)
       "b": [{1, 2, 3, 4, 5, 6, 7}, {2, 3, 5, 6, 7}, {1, 4, 5}, {1, 3, 4, 6}],
       "c": [{1, 2, 3}, set(), {1}, {2, 3}]}
OFFICIAL = {  # overall and L1 categories, x100, as the script printed them
    "v1": (51.58730158730158, {"entity": 60.0, "attribute": 100.0, "relation": 0.0, "global": 100.0, "other": 50.0}),
    # the first item's question 4 depends on question 1, its skipped first row: the image is left out
    "v2": (44.047619047619044, {"entity": 50.0, "attribute": 100.0, "relation": 0.0, "global": 100.0, "other": 50.0}),
}


def stub_files(folder: Path, rows) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(dpg.CSV_COLUMNS)
    for item, qid, dep, tup, q in rows:
        broad, _, detail = tup.split("(")[0].strip().partition("-")
        w.writerow([item, f"prompt {item}", "", qid, dep, broad.strip(), detail.strip(), tup, q])
    (folder / "small.csv").write_text(buf.getvalue())
    from PIL import Image

    (folder / "img").mkdir()
    for m, item in enumerate("abcd"):  # d has no questions; notes.txt is no image: both left out
        grid = np.zeros((8, 8, 3), np.uint8)
        for k, (x, y) in enumerate([(0, 0), (4, 0), (0, 4), (4, 4)]):
            grid[y:y + 4, x:x + 4] = (m * 50 + 10, k * 50 + 10, 0)
        Image.fromarray(grid).save(folder / "img" / f"{item}.png")
    (folder / "img" / "notes.txt").write_text("not an image")
    return folder / "small.csv"


def stub_answers(crop: np.ndarray, qs) -> list[str]:
    item, k = "abcd"[(int(crop[0, 0, 0]) - 10) // 50], (int(crop[0, 0, 1]) - 10) // 50
    yes = YES.get(item, [set()] * 4)[k]
    return ["yes" if (q.text[0] == item and q.qid in yes) else "no" for q in qs]


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_the_rules_give_the_official_script_s_numbers_quirks_included(variant, tmp_path):
    rows = ROWS if variant == "v1" else [r if r[:2] != ("a", 4) else ("a", 4, "1,3", *r[3:]) for r in ROWS]
    path = stub_files(tmp_path, rows)
    got = dpg.score_folder(tmp_path / "img", path, stub_answers, resolution=4, pic_num=4, rules=dpg.OFFICIAL)
    overall, categories = OFFICIAL[variant]
    assert got["overall"] * 100 == pytest.approx(overall, abs=1e-12)
    assert {k: v * 100 for k, v in got["categories"].items()} == pytest.approx(categories, abs=1e-12)
    assert set(got["failed"]) == {"d.png", "notes.txt"} | ({"a.png"} if variant == "v2" else set())
    # each quirk matters here: without it the numbers differ
    for rules in (dpg.Rules(False, "last"), dpg.Rules(True, "all")):
        other = dpg.score_folder(tmp_path / "img", path, stub_answers, 4, 4, rules)
        assert (other["overall"], other["categories"]) != (got["overall"], got["categories"])


def test_the_parent_rule_is_one_pass_in_file_order():
    qs = [Question(1, "entity - whole (a)", (), ""), Question(2, "x - y (a)", (1,), ""),
          Question(3, "x - y (a)", (2,), ""), Question(4, "x - y (a)", (5,), ""), Question(5, "x - y (a)", (1,), "")]
    after = dpg.parent_rule(qs, {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0})
    assert after == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 0.0}  # 3 follows 2 down; 4 read 5 before 5 was zeroed
    with pytest.raises(dpg.MissingParent):
        dpg.parent_rule(qs[1:], {2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0})


def test_a_question_file_without_a_column_is_refused_naming_it(tmp_path, capsys):
    path = stub_files(tmp_path, ROWS)
    text = path.read_text().replace(",dependency,", ",depends,", 1)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(MetadataError, match=r"bad.csv:1: the question file has no column 'dependency'"):
        dpg.read_questions(tmp_path / "bad.csv")
    rc = gvu_main(["prompts", "dpg", "--world", "coco", "--csv", str(tmp_path / "bad.csv"), "--out",
                   str(tmp_path / "out")])
    assert rc == 2 and "no column 'dependency'" in capsys.readouterr().err and not (tmp_path / "out").exists()
    # a well-formed file whose items are not DPG-Bench's prompts is refused too; one whose items are is copied
    rc = gvu_main(["prompts", "dpg", "--world", "coco", "--csv", str(path), "--out", str(tmp_path / "out")])
    assert rc == 2 and "have no prompt file" in capsys.readouterr().err
    (tmp_path / "g").mkdir()
    good = stub_files(tmp_path / "g", [("COCOval2014000000010363", *r[1:]) for r in ROWS if r[0] == "b"])
    assert gvu_main(["prompts", "dpg", "--world", "coco", "--csv", str(good), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "dpg_bench.csv").read_bytes() == good.read_bytes()


# ------------------------------------------------------------------------------------ DPG-Bench's layout

def test_generate_writes_dpg_bench_s_layout_and_its_rules_read_it(rows, tmp_path, capsys):
    model = save_builtin(build_builtin("tiny", seed=0), tmp_path / "tiny")
    assert gvu_main(["prompts", "dpg", "--world", "shapes", "-n", "3", "--out", str(tmp_path / "set")]) == 0
    assert gvu_main(["generate", "--model", str(model), "--dpg", str(tmp_path / "set" / "prompts"), "--outdir",
                     str(tmp_path / "grids"), "--seed", "3"]) == 0
    assert "bash dpg_bench/dist_eval.sh" in capsys.readouterr().out
    assert gvu_main(["generate", "--model", str(model), "--metadata", str(tmp_path / "set" / "evaluation_metadata.jsonl"),
                     "--outdir", str(tmp_path / "layout"), "--seed", "3"]) == 0
    from gvu.eval.layout import load_image, read_layout

    names = sorted(p.name for p in (tmp_path / "grids").iterdir())
    assert names == [f"shapes_{i:05d}.png" for i in range(3)]
    for s in read_layout(tmp_path / "layout"):  # each quadrant is the sample `gvu generate --metadata` drew
        grid = load_image(tmp_path / "grids" / names[s.index])
        assert grid.shape == (192, 192, 3)
        assert np.array_equal(dpg.crops(grid, 96)[s.sample_index], load_image(s.path))
    # DPG-Bench's procedure with the judge as its answerer scores the grids as gvu judge scores the same images
    by_dpg = dpg.score_folder(tmp_path / "grids", tmp_path / "set" / "dpg_bench.csv", judge_answers, 96, 4, dpg.SHAPES)
    _, by_judge = judge_folder(tmp_path / "layout", progress=False)
    assert by_dpg["overall"] == pytest.approx(by_judge["overall"], abs=1e-12) and by_dpg["images"] == 3
    assert by_dpg["categories"] == pytest.approx(by_judge["categories"], abs=1e-12)

    bad = ["generate", "--model", str(model), "--dpg", str(tmp_path / "set" / "prompts"), "--outdir"]
    assert gvu_main([*bad, str(tmp_path / "g2"), "--per-prompt", "2"]) == 2
    assert "--per-prompt 2" in capsys.readouterr().err
    assert gvu_main([*bad, str(tmp_path / "grids")]) == 2 and "not empty" in capsys.readouterr().err
    shutil.copytree(dpg.PROMPTS_DIR, tmp_path / "coco", dirs_exist_ok=True)
    assert gvu_main([*bad[:4], str(tmp_path / "coco"), "--outdir", str(tmp_path / "g3")]) == 2
    err = capsys.readouterr().err
    assert "0.txt" in err and "not in the model's vocabulary" in err and not (tmp_path / "g3").exists()


def test_the_report_and_the_seeds_aggregate_carry_dpg(tmp_path):
    """The report's comparison (the gain's interval from the two standard errors) and `gvu demo --seeds`' aggregate
    (its categories where the other benchmarks have tags)."""
    from gvu.analysis.report import compare
    from gvu.analysis.seeds import aggregate, markdown

    def summary(overall, entity):
        cats = {"entity": entity, "attribute": 0.1, "relation": None, "global": 0.5, "other": 0.2}
        return {"dpg": {"overall": overall, "se": 0.01, "categories": cats, "prompts": 200, "images": 1600,
                        "all_yes": 0.0}}

    runs = []
    for seed, after in ((0, 0.30), (1, 0.34), (2, 0.32)):
        c = compare(summary(0.25, 0.5), summary(after, 0.6))
        assert c["dpg"]["overall"]["gain"] == pytest.approx(after - 0.25)
        assert c["dpg"]["overall"]["gain_ci95_half_width"] == pytest.approx(1.96 * 2 ** 0.5 * 0.01)
        assert c["dpg"]["categories"]["entity"] == {"before": 0.5, "after": 0.6}
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "report.json").write_text(json.dumps({"comparison": c,
                                                                           "demo": {"demo": {"seed": seed}}}))
        runs.append(tmp_path / f"seed-{seed}")
    d = aggregate(runs)["benchmarks"]["dpg"]
    assert d["overall"]["after_mean"] == pytest.approx(0.32) and d["overall"]["gain"] == pytest.approx(0.07)
    assert set(d["tags"]) == {"entity", "attribute", "global", "other"}  # a category no question asks is left out
    assert "## DPG-shapes" in markdown(aggregate(runs))
    from gvu.analysis.dpg import markdown_dpg

    for after, verdict in ((0.30, "GvU lifts DPG-shapes"), (0.26, "no lift shown"), (0.20, "GvU lowers DPG-shapes")):
        assert verdict in "\n".join(markdown_dpg(compare(summary(0.25, 0.5), summary(after, 0.5))["dpg"]))


def test_no_training_prompt_describes_a_dpg_shapes_scene(rows):
    """The protocol's first rule for the third test benchmark: a training prompt with a relation names two shapes, a
    dense one three to six, so their scenes never meet (docs/protocol.md)."""
    from gvu.eval.prompts import build_train
    from gvu.world.kinds import scene_key

    train = build_train("shapes", n=3000)
    assert all(len(r["include"]) == 2 for r in train if any("position" in it for it in r["include"]))
    assert all(len(r["include"]) >= 3 and any("position" in it for it in r["include"]) for r in rows)
    assert not {scene_key(r) for r in rows} & {scene_key(r) for r in train}


def test_eval_overwrite_clears_every_benchmark_s_prompt_folders(tmp_path):
    """`gvu eval --overwrite` leaves no prompt folder of an earlier, longer evaluation for a judge to read."""
    from gvu.rl.runfolder import claim_eval_folder

    for bench in ("dpg", "val_geneval", "val_genevalpp"):
        (tmp_path / bench / "00007").mkdir(parents=True)
    (tmp_path / "summary.json").write_text("{}\n")
    with pytest.raises(ValueError, match="--overwrite"):
        claim_eval_folder(tmp_path, False)
    claim_eval_folder(tmp_path, True)
    assert not any((tmp_path / b / "00007").exists() for b in ("dpg", "val_geneval", "val_genevalpp"))
