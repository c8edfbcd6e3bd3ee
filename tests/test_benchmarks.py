"""The benchmarks' plumbing on the tiny preset, one repeat: the JSON's structure and that every equality check
inside ran and passed. Timings are never asserted (docs/design.md, "Tests and benchmarks")."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gvu.perf import measure, run as perf
from gvu.perf.step import step_config
from gvu.rl.config import TrainConfig
from gvu.perf.reward import _compare_reward, prompts_of_length
from gvu.cli import build_parser
from gvu.models.builtin.model import build_builtin
from gvu.reward import RewardOutput

REPO = Path(__file__).resolve().parent.parent
HEADLINES = ("reward_speedup", "rollout_speedup_cfg", "rollout_speedup_nocfg", "update_mfu", "pretrain_mfu",
             "peak_rss_mib")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    before = torch.get_num_threads()
    res = perf.run_benchmarks(quick=True, out=out, threads=1, size="tiny", repeats=1)
    assert torch.get_num_threads() == before  # the thread count is put back
    return res, out


def timing_ok(t: dict, repeats: int = 1):
    assert len(t["times_s"]) == repeats and 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
    assert (t["min_s"], t["max_s"]) == (min(t["times_s"]), max(t["times_s"]))


def speedup_ok(c: dict):
    """The speedup is the ratio of the medians, its range from the extreme pairs, around it."""
    assert c["speedup"] == pytest.approx(c["baseline"]["median_s"] / c["ours"]["median_s"])
    lo, hi = c["speedup_range"]
    assert lo == pytest.approx(c["baseline"]["min_s"] / c["ours"]["max_s"]) and lo <= c["speedup"] <= hi
    assert hi == pytest.approx(c["baseline"]["max_s"] / c["ours"]["min_s"])


def test_json_written_with_headlines_and_machine(run):
    res, out = run
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    for k in HEADLINES:
        assert isinstance(res[k], float) and math.isfinite(res[k]) and res[k] > 0, k
    m = res["machine"]
    assert len(m["load_average"]) == 3 and len(res["load_average_end"]) == 3  # the machine's load, start and end
    assert res["rollout_speedup_cfg_range"][0] <= res["rollout_speedup_cfg"] <= res["rollout_speedup_cfg_range"][1]
    assert m["threads"] == 1 and m["nproc"] >= 1 and m["cpu"] and m["torch"] == torch.__version__
    assert res["headline_cases"]["rollout_speedup_cfg"]["guidance"] == 3.0
    assert "reward" in perf.format_table(res) and "MFU" in perf.format_table(res)


def test_reward_checked_against_the_published_loop(run):
    cases = run[0]["reward"]["cases"]
    assert [(c["prompt_tokens"], c["batch"]) for c in cases] == [(16, 4), (32, 4)]
    for c in cases:
        assert c["checked"] is True and c["max_rel_diff"] <= measure.REWARD_RTOL
        assert c["max_token_rel_diff"] <= measure.TOKEN_RTOL
        timing_ok(c["baseline"]), timing_ok(c["ours"])
        speedup_ok(c)
    # no 32-token prompt in the grammar: constructed; a random model's float32 product underflows there
    assert cases[1]["prompts"] == "constructed color_attr"
    assert cases[1]["loop_float32_product_subnormal_or_zero"] == 4


def test_timed_pair_takes_turns():
    """Ours and the baseline alternate, each after its own warm-up, so a drifting machine moves both."""
    calls = []
    ours, t_ours, base, t_base = measure.timed_pair(lambda: calls.append("o") or "O", lambda: calls.append("b") or "B",
                                                     repeats=3, base_repeats=2, base_warmup=0)
    assert calls == ["o", "o", "b", "o", "b", "o"] and (ours, base) == ("O", "B")
    timing_ok(t_ours, 3), timing_ok(t_base, 2)


def test_timed_pair_runs_a_short_call_in_a_row_and_times_one_call():
    """A call shorter than min_sample_s is timed as a run of calls, each sample reporting one call's time; a call
    longer than it alone."""
    import time
    calls = {"o": 0, "b": 0}

    def short():
        calls["o"] += 1
        time.sleep(0.002)

    def long():
        calls["b"] += 1
        time.sleep(0.06)
    _, t_ours, _, t_base = measure.timed_pair(short, long, repeats=3, base_repeats=3, min_sample_s=0.05)
    assert t_ours["calls_per_sample"] >= 2 and t_base["calls_per_sample"] == 1
    assert calls == {"o": 1 + 3 * t_ours["calls_per_sample"], "b": 1 + 3}
    assert all(0.002 <= t < 0.05 for t in t_ours["times_s"]) and all(t >= 0.06 for t in t_base["times_s"])


def test_merged_processes_pool_the_repeats_and_recompute_the_speedup():
    from gvu.perf.processes import merge
    from gvu.perf.measure import summary

    def case(base, ours, diff):
        return {"batch": 4, "baseline": summary(base), "ours": summary(ours), "speedup": 0.0, "speedup_range": [],
                "checked": True, "max_rel_diff": diff}
    parts = [{"model": "m", "cases": [case([1.0, 1.2], [0.1, 0.1], 1e-7)]},
             {"model": "m", "cases": [case([2.0, 2.2], [0.1, 0.2], 3e-7)]}]
    c = merge("reward", parts)["cases"][0]
    assert c["baseline"]["times_s"] == [1.0, 1.2, 2.0, 2.2] and c["baseline"]["process_medians"] == [1.1, 2.1]
    assert c["speedup"] == pytest.approx(1.6 / 0.1) and c["speedup_range"] == pytest.approx([1.0 / 0.2, 2.2 / 0.1])
    assert c["process_speedups"] == pytest.approx([11.0, 2.1 / 0.15]) and c["max_rel_diff"] == 3e-7
    parts[1]["cases"][0]["checked"] = False
    assert merge("reward", parts)["cases"][0]["checked"] is False
    assert merge("janus", [{"error": "x"}, {"error": "x"}]) == {"error": "x"}


def test_the_comparisons_run_in_fresh_processes():
    """processes=2: the reward benchmark runs twice, each time in a new process, and the repeats are pooled."""
    from dataclasses import replace
    from gvu.perf.processes import in_processes

    p = replace(measure.plan(True, "tiny", repeats=2), reward_lengths=(16,), processes=2)
    res = in_processes("reward", p, threads=1)
    c = res["cases"][0]
    assert res["processes"] == 2 and c["checked"] is True
    for side in ("baseline", "ours"):
        timing_ok(c[side], 4)
        assert len(c[side]["process_medians"]) == 2
    assert c["speedup_range"][0] <= c["speedup"] <= c["speedup_range"][1]


def test_per_row_fit_recovers_a_line_and_the_ceiling():
    from gvu.perf.rollout import per_row_fit
    cases = [{"forward_rows": rows, "ours": {"median_s": 0.1 + 0.002 * rows}} for rows in (16, 32, 64, 128)]
    f = per_row_fit(cases)
    assert f["overhead_s"] == pytest.approx(0.1) and f["per_row_s"] == pytest.approx(0.002)
    assert f["points"] == 4 and f["max_abs_residual_s"] < 1e-9


def test_rollout_checked_against_generate(run):
    res = run[0]
    cases = res["rollout"]["cases"]
    assert [c["guidance"] for c in cases] == [1.0, 3.0]
    fit = res["rollout"]["ours_fit"]
    assert [c["forward_rows"] for c in cases] == [8, 16] and fit["points"] == 2
    for c in cases:
        if fit["per_row_s"] > 0:  # two points on a random tiny model: the slope's sign is the machine's
            assert c["ceiling"] == pytest.approx(c["baseline"]["median_s"] / (fit["per_row_s"] * c["forward_rows"]))
    for c in cases:
        assert c["checked"] is True
        assert c["max_abs_diff_prob"] <= measure.SCORES_PROB_ATOL and c["max_abs_diff_logp"] <= measure.SCORES_LOGP_ATOL
        assert c["ours_replay_max_abs_diff_logp"] <= measure.SCORES_LOGP_ATOL
        assert c["ours_tokens_per_s"] > 0 and c["baseline_tokens_per_s"] > 0
        timing_ok(c["baseline"]), timing_ok(c["ours"])
        speedup_ok(c)


def test_step_and_limit(run):
    s, li = run[0]["step"], run[0]["limit"]
    assert s["images_per_step"] == 8 and set(s["median_s"]) >= {"time/sample", "time/decode", "time/reward",
                                                                "time/update", "step_time"}
    assert s["update_tokens"]["update"] > 0 and s["update_tokens"]["reference"] > 0  # beta > 0: a reference
    assert s["peak_rss_mib"] > 0 and s["images_per_s"] > 0
    for t in (*s["phases"].values(), s["s_per_kept_image"]):
        timing_ok(t)
    assert s["s_per_kept_image"]["median_s"] == pytest.approx(s["phases"]["step_time"]["median_s"] / 8)
    assert s["config"]["reuse_reward_pass"] is True and s["config"]["dynamic_sampling"] is True
    shapes = [k for k in li["matmul"] if "reference" not in k]
    assert li["peak_gflops_per_s"] == max(li["matmul"][k]["gflops_per_s"] for k in shapes)
    assert li["pretrain"]["tokens_per_s"] > 0 and 0 < li["pretrain_mfu"] and 0 < li["update_mfu"]


def test_janus_reward_checked(run):
    # Janus is a supported model (the transformers floor has it): its reward is checked against the loop, and an
    # error reported in the JSON fails here
    j = run[0]["janus"]
    assert isinstance(j, dict) and "error" not in j, j
    assert j["checked"] is True and j["max_rel_diff"] <= measure.REWARD_RTOL and j["speedup"] > 0


def test_reward_check_catches_a_wrong_value():
    loop = [(0.5, [0.5, 0.5]), (0.25, [0.25, 0.25])]
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.25]]))
    ok = RewardOutput(torch.tensor([0.5, 0.25]), logp, torch.ones(2, 2))
    assert _compare_reward(ok, loop)["checked"] is True
    with pytest.raises(AssertionError, match="reward differs"):
        _compare_reward(RewardOutput(torch.tensor([0.5, 0.2501]), logp, torch.ones(2, 2)), loop)


def test_prompts_of_exact_lengths():
    tok = build_builtin("tiny").tokenizer
    for L in (8, 16, 32, 33, 34):
        prompts, _ = prompts_of_length(tok, L, 5)
        assert len(prompts) == 5 and all(len(tok.encode(p)) == L for p in prompts)


def test_cli_parses_and_only_picks_benchmarks():
    parser = build_parser()
    a = parser.parse_args(["bench", "--quick", "--out", "x.json", "--threads", "2"])
    assert (a.quick, a.out, a.threads, a.size, a.only) == (True, "x.json", 2, "default", None)  # None: all
    assert parser.parse_args(["bench", "--only", "reward,step"]).only == ("reward", "step")
    r = subprocess.run([sys.executable, "-m", "gvu.cli", "bench", "--only", "speed"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 2 and "unknown name(s) ['speed']" in r.stderr


IO_FIELDS = {"model", "output_dir", "eval_steps", "save_steps", "threads"}  # where the run goes, not its step


@pytest.mark.parametrize("quick", [False, True])
def test_the_step_benchmark_is_train_configs_default_step(tmp_path, quick):
    """Every field that defines the step is TrainConfig()'s: a default changed in the config is what the benchmark
    times, and restating a number in the benchmark fails here."""
    p = measure.plan(quick)
    cfg, default = step_config(p, tmp_path), TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name not in IO_FIELDS:
            assert getattr(cfg, f.name) == getattr(default, f.name), f.name
    assert Path(cfg.model) == REPO / "bases" / "regular" and (Path(cfg.model) / "model.safetensors").exists()
    assert (cfg.eval_steps, cfg.save_steps) == (0, 0)
    assert p.step_repeats >= (3 if quick else 5)
    assert p.repeats * p.processes >= 5 and p.baseline_repeats * p.processes >= 5 and p.processes >= 3
    # docs/performance.md names the step by TrainConfig's numbers
    doc = (REPO / "docs" / "performance.md").read_text()
    assert f"{default.prompts_per_step} prompts x {default.num_generations} images" in doc


def test_step_ab_pairs_the_old_and_the_new_step():
    res = perf.run_benchmarks(quick=True, threads=1, size="tiny", repeats=2, only=("step_ab",))
    ab = res["step_ab"]
    assert ab["same_work"] and ab["max_abs_diff"]["loss"] < 1e-4 and ab["max_abs_diff"]["reward"] < 1e-4
    b, a = ab["before"]["s_per_kept_image"], ab["after"]["s_per_kept_image"]
    timing_ok(b, 2), timing_ok(a, 2)
    assert ab["reduction_s_per_kept_image"] == pytest.approx(1 - a["median_s"] / b["median_s"])
    lo, hi = ab["reduction_range"]
    assert lo <= ab["reduction_s_per_kept_image"] <= hi and lo <= ab["paired_reductions"]["median"] <= hi
    assert ab["before_changes"] == {"reuse_reward_pass": False, "monitor_images": 0, "share_prompt_prefix": False}
    assert "step A/B" in perf.format_table(res) and "step" not in res


def test_only_runs_the_named_benchmarks(tmp_path):
    res = perf.run_benchmarks(quick=True, threads=1, size="tiny", repeats=1, only=("rollout",))
    assert "rollout" in res and not {"reward", "step", "limit", "step_ab"} & set(res)
