"""A prompt curriculum by the policy's own learning signal (docs/rl-defaults.md, "The curriculum").

Each prompt's kind (its `tag`) is drawn with probability proportional to how much signal that kind's groups carried
lately: the running mean, per kind, of the standard deviation of the rewards within a group. A group whose images all
score the same teaches nothing (its advantages are 0); a kind the policy always gets right, or never, is drawn less,
and one whose images differ is drawn more. The signal is the reward's own, so the curriculum needs no labels: it
works the same for the intrinsic reward and for an oracle. A floor keeps every kind in the mix (its estimate stays
fresh) and kinds not yet seen are drawn as often as the best one seen.

The order is a pure function of (seed, data position, the estimates): a resumed run draws the same prompts.
"""

from __future__ import annotations

import numpy as np


class KindCurriculum:
    def __init__(self, rows: list[dict], seed: int, floor: float = 0.25, decay: float = 0.5,
                 prior: dict[str, float] | None = None):
        """`floor` in [0, 1] and `decay` in (0, 1], as TrainConfig checks them (curriculum_floor, curriculum_decay).
        `prior`: kind -> relative weight (kinds not named get 0), the mix asked for (TrainConfig.prompt_weights by
        tag); None: every kind alike."""
        self.seed, self.floor, self.decay = seed, floor, decay
        self.kinds = sorted({r.get("tag", "") for r in rows})
        self.members = {k: [i for i, r in enumerate(rows) if r.get("tag", "") == k] for k in self.kinds}
        self.drawn = {k: 0 for k in self.kinds}
        self.signal: dict[str, float | None] = {k: None for k in self.kinds}
        self.prior = None
        if prior is not None:
            p = np.array([float(prior.get(k, 0.0)) for k in self.kinds])
            if not (p >= 0).all() or p.sum() <= 0:
                raise ValueError(f"the curriculum's prior must weigh at least one of the prompts' kinds "
                                 f"{self.kinds} above 0, got {prior}")
            self.prior = p / p.sum()

    def weights(self) -> np.ndarray:
        """Each kind's probability: floor / K + (1 - floor) * signal_k / sum(signal); with a prior p (summing to
        1), floor * p_k + (1 - floor) * p_k signal_k / sum(p signal), so that the mix asked for is the mix drawn
        when every kind carries the same signal."""
        K = len(self.kinds)
        seen = [s for s in self.signal.values() if s is not None]
        top = max(seen) if seen else 1.0
        s = np.array([top if v is None else v for v in self.signal.values()], dtype=float)
        if self.prior is not None:
            ps = self.prior * s
            return self.floor * self.prior + (1.0 - self.floor) * (ps / ps.sum() if ps.sum() > 0 else self.prior)
        share = s / s.sum() if s.sum() > 0 else np.full(K, 1.0 / K)
        return self.floor / K + (1.0 - self.floor) * share

    def next_index(self, pos: int) -> int:
        """The row for data position `pos`: a kind drawn by the weights, then that kind's next row in a per-epoch
        shuffled order."""
        rng = np.random.default_rng([self.seed, pos])
        k = int(rng.choice(len(self.kinds), p=self.weights()))
        kind = self.kinds[k]
        members = self.members[kind]
        epoch, i = divmod(self.drawn[kind], len(members))
        self.drawn[kind] += 1
        order = np.random.default_rng([self.seed, k, epoch]).permutation(len(members))
        return members[order[i]]

    def observe(self, sums: dict[str, tuple[float, float]]) -> None:
        """Fold one draw in: kind -> (sum of the groups' reward std, number of groups), already summed over ranks."""
        for kind, (total, n) in sums.items():
            if n <= 0:
                continue
            mean = total / n
            old = self.signal[kind]
            self.signal[kind] = mean if old is None else (1.0 - self.decay) * old + self.decay * mean

    def group_sums(self, rows: list[dict], reward_N, G: int) -> np.ndarray:
        """[K, 2]: per kind, the sum of the within-group reward std and the number of groups of one draw."""
        std_P = reward_N.float().view(-1, G).std(1).tolist() if G > 1 else [0.0] * len(rows)
        out = np.zeros((len(self.kinds), 2))
        index = {k: i for i, k in enumerate(self.kinds)}
        for row, std in zip(rows, std_P):
            out[index[row.get("tag", "")]] += (std, 1.0)
        return out

    def fold(self, sums_K2: np.ndarray) -> None:
        self.observe({k: (float(sums_K2[i, 0]), float(sums_K2[i, 1])) for i, k in enumerate(self.kinds)})

    def log(self) -> dict[str, float]:
        """The current mix, for the training log (`curriculum/<kind>`)."""
        return {f"curriculum/{k}": float(w) for k, w in zip(self.kinds, self.weights())}

    def state_dict(self) -> dict:
        return {"kinds": list(self.kinds), "drawn": dict(self.drawn), "signal": dict(self.signal)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["kinds"]) != self.kinds:
            raise ValueError(f"the checkpoint's curriculum has kinds {state['kinds']}, this run's prompts {self.kinds}: "
                             "resume with the same prompts")
        self.drawn, self.signal = dict(state["drawn"]), dict(state["signal"])
