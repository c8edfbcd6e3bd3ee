"""A 2-D reader for the built-in model: a learned row and column embedding added to the image tokens that the
understanding branch reads, as a vision encoder's 2-D position embeddings do in real UMMs (SigLIP in Janus and
X-Omni), while generation keeps writing a flat 1-D raster unless the config asks for `paint` (below).

`GridLlamaForCausalLM` is a stock `LlamaForCausalLM` plus two small embedding tables; everything else (PEFT,
save_pretrained/from_pretrained, KV caches, FSDP2) is transformers' own. The grid is added to an image token only
when it sits inside an understanding image span: the `open_id` token (`<see>` in the built-in vocabulary) followed
by exactly T image ids, the k-th of which is cell k (row k // cols, column k % cols). A generation sequence opens its
image with another token (`<boi>`), so the sampler, the teacher-forced generation pass and the unconditional rows
of guidance never see the grid, and a cached decode step (one token, no opener in view) never does either; the
understanding prefix always arrives whole, so the rule needs no state.

The tables start as ramps (`ordinal_init`): row r is (r - mid) / mid times one random direction, plus small noise,
so "further left" is one linear direction from the first step, the way `align_embeddings` starts words and codes
from shared factors. Measured in docs/results.md: relation matching and how fast it is learned, with and without.

Letters: N rows, S sequence length, D hidden size.
"""

from __future__ import annotations

import inspect

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

GRID_KEY = "gvu_grid"
"""Config attribute holding {rows, cols, image_token_offset, num_codes, open_id} and the reader's options
(bidirectional, relative, rope2d; paint with boi_id) (saved in config.json)."""


class GridLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        g = getattr(config, GRID_KEY, None)
        if not g:
            raise ValueError(f"GridLlamaForCausalLM needs config.{GRID_KEY} = {{rows, cols, image_token_offset, "
                             "num_codes, open_id}}")
        self.grid = dict(g)
        self.row_embed = torch.nn.Embedding(self.grid["rows"], config.hidden_size)
        self.col_embed = torch.nn.Embedding(self.grid["cols"], config.hidden_size)
        if self.grid.get("relative"):
            R, C = self.grid["rows"], self.grid["cols"]
            self.rel_bias = torch.nn.Parameter(torch.zeros(config.num_attention_heads, 2 * R - 1, 2 * C - 1))
        if self.grid.get("rope2d"):
            self.model.rotary_emb = GridRotaryEmbedding(config=config)
        self.post_init()
        if self.grid.get("relative"):
            directional_init(self.rel_bias)

    def grid_cells(self, ids_NS: torch.Tensor, position_ids: torch.Tensor | None = None,
                   past: int = 0) -> torch.Tensor:
        """Cell index of every image token the grid covers, -1 elsewhere: [N, S]. Without `paint`, the tokens of
        understanding image spans (read_cells); with it, also those of the image a generation sequence writes."""
        return self.cells(ids_NS, position_ids, past)[0]

    def cells(self, ids_NS: torch.Tensor, position_ids: torch.Tensor | None = None,
              past: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid_cells, read_cells) from one pass: every cell the grid covers, and those of understanding spans
        only (which alone attend both ways and take the relative bias)."""
        read_NS = self.read_cells(ids_NS)
        if not self.grid.get("paint"):
            return read_NS, read_NS
        paint_NS = self.span_cells(ids_NS, self.grid["boi_id"])
        S = ids_NS.shape[1]
        pos_NS = position_ids if position_ids is not None else torch.arange(S, device=ids_NS.device)[None] + past
        pos_NS = pos_NS.expand(ids_NS.shape[0], S)
        opened_N = (ids_NS == self.grid["boi_id"]).any(dim=1)
        if bool(opened_N.any()):  # remember where each row's image starts, for the cached decode steps after it
            j_S = torch.arange(S, device=ids_NS.device)
            last_NS = torch.where(ids_NS == self.grid["boi_id"], j_S, torch.full_like(ids_NS, -1))
            last_N = last_NS.max(dim=1).values
            start_N = pos_NS.gather(1, last_N.clamp(min=0)[:, None])[:, 0] + 1
            self._paint_start_N = torch.where(opened_N, start_N, torch.full_like(start_N, -10 ** 9))
        elif past > 0 and getattr(self, "_paint_start_N", None) is not None \
                and self._paint_start_N.shape[0] == ids_NS.shape[0]:
            k_NS = pos_NS - self._paint_start_N.to(pos_NS.device)[:, None]
            inside_NS = (k_NS >= 0) & (k_NS < self.grid["rows"] * self.grid["cols"]) & self.is_image(ids_NS)
            paint_NS = torch.where(inside_NS, k_NS, torch.full_like(k_NS, -1))
        return torch.where(read_NS >= 0, read_NS, paint_NS), read_NS

    def select_decode_rows(self, index_B: torch.Tensor) -> None:
        """Keep the cached decode state of rows `index_B` (repeats allowed), as a KV cache's
        batch_select_indices keeps their keys and values: where each row's painted image starts."""
        if getattr(self, "_paint_start_N", None) is not None:
            self._paint_start_N = self._paint_start_N[index_B.to(self._paint_start_N.device)]

    def read_cells(self, ids_NS: torch.Tensor) -> torch.Tensor:
        """Cell index of every token inside an understanding image span, -1 elsewhere: [N, S]."""
        return self.span_cells(ids_NS, self.grid["open_id"])

    def is_image(self, ids_NS: torch.Tensor) -> torch.Tensor:
        off = self.grid["image_token_offset"]
        return (ids_NS >= off) & (ids_NS < off + self.grid["num_codes"])

    def span_cells(self, ids_NS: torch.Tensor, opener_id: int) -> torch.Tensor:
        """Cell index of every image token within rows x cols tokens after an `opener_id` token in view, -1
        elsewhere: [N, S]."""
        g = self.grid
        T = g["rows"] * g["cols"]
        S = ids_NS.shape[1]
        j_S = torch.arange(S, device=ids_NS.device)
        opener_NS = torch.where(ids_NS == opener_id, j_S, torch.full_like(ids_NS, -1))
        last_open_NS = torch.cummax(opener_NS, dim=1).values
        k_NS = j_S - last_open_NS - 1
        inside_NS = (last_open_NS >= 0) & (k_NS >= 0) & (k_NS < T) & self.is_image(ids_NS)
        return torch.where(inside_NS, k_NS, torch.full_like(k_NS, -1))

    def grid_embeds(self, ids_NS: torch.Tensor, cell_NS: torch.Tensor) -> torch.Tensor:
        """Input embeddings [N, S, D]: the token embedding plus row + column embedding inside image spans
        (`cell_NS` from grid_cells)."""
        emb_NSD = self.get_input_embeddings()(ids_NS)
        inside_NS = cell_NS >= 0
        if not bool(inside_NS.any()):
            return emb_NSD
        cell_NS = cell_NS.clamp(min=0)
        add_NSD = self.row_embed(cell_NS // self.grid["cols"]) + self.col_embed(cell_NS % self.grid["cols"])
        return emb_NSD + add_NSD.to(emb_NSD.dtype) * inside_NS[..., None].to(emb_NSD.dtype)

    def span_mask(self, cell_NS: torch.Tensor, mask_NS: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """With `bidirectional`, a 4-D additive mask [N, 1, S, S]: causal over real tokens, plus every token of an
        understanding image span seeing every other token of the same span (as a vision encoder's patches see
        each other); None where the batch holds no such span. Only full forwards carry image spans: a cached
        decode step has one token, gets the plain causal mask, and reads the span's keys as they were computed."""
        if not bool((cell_NS >= 0).any()):
            return None
        S = cell_NS.shape[1]
        j_S = torch.arange(S, device=cell_NS.device)
        same_NSS = same_span(cell_NS)
        causal_SS = j_S[:, None] >= j_S[None, :]
        allowed = (causal_SS[None] | same_NSS) & mask_NS.bool()[:, None, :]
        allowed |= torch.eye(S, dtype=torch.bool, device=cell_NS.device)[None]  # a pad row attends to itself
        return torch.zeros(allowed.shape, dtype=dtype, device=cell_NS.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]

    def relative_bias(self, cell_NS: torch.Tensor) -> torch.Tensor:
        """[N, H, S, S]: rel_bias[h, row offset, column offset] between two tokens of one understanding image span
        (query minus key, so a key further left has a positive column offset), 0 elsewhere."""
        R, C = self.grid["rows"], self.grid["cols"]
        same_NSS = same_span(cell_NS)
        c = cell_NS.clamp(min=0)
        dr_NSS = (c // C)[:, :, None] - (c // C)[:, None, :] + R - 1
        dc_NSS = (c % C)[:, :, None] - (c % C)[:, None, :] + C - 1
        bias_NHSS = self.rel_bias[:, dr_NSS, dc_NSS].permute(1, 0, 2, 3)
        return bias_NHSS * same_NSS[:, None].to(bias_NHSS.dtype)

    def grid_positions(self, cell_NS: torch.Tensor, position_ids: torch.Tensor | None,
                       past: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary positions of every token along the grid's rows and along its columns, [N, S] each: a token
        outside an image span keeps its 1-D position on both; the image token of cell (r, c) sits at its span
        opener's position + 1 + r along rows and + 1 + c along columns, so two image tokens are (row offset,
        column offset) apart, and the text after the image sees a horizontal offset as it sees a vertical one.
        (Position ids count real tokens, so cell k sits k past the opener's position + 1: no opener in view is
        needed, as in a cached decode step.)"""
        N, S = cell_NS.shape
        if position_ids is None:
            position_ids = torch.arange(S, device=cell_NS.device)[None] + past
        pos_NS = position_ids.expand(N, S)
        inside_NS = cell_NS >= 0
        c = cell_NS.clamp(min=0)
        base_NS = pos_NS - c
        C = self.grid["cols"]
        rows = torch.where(inside_NS, base_NS + c // C, pos_NS)
        cols = torch.where(inside_NS, base_NS + c % C, pos_NS)
        return rows, cols

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, **kwargs):
        if input_ids is not None and inputs_embeds is None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
            position_ids = kwargs.get("position_ids")
            cell_NS, read_NS = self.cells(input_ids, position_ids, past)
            if self.grid.get("rope2d") and bool((cell_NS >= 0).any()):
                self.model.rotary_emb.grid_positions = self.grid_positions(cell_NS, position_ids, past)
            inputs_embeds = self.grid_embeds(input_ids, cell_NS)
            if (self.grid.get("bidirectional") or self.grid.get("relative")) and attention_mask is not None \
                    and attention_mask.dim() == 2 and attention_mask.shape[1] == input_ids.shape[1]:
                span = self.span_mask(read_NS, attention_mask, inputs_embeds.dtype)
                if span is not None and self.grid.get("relative"):
                    span = span + self.relative_bias(read_NS).to(span.dtype)
                attention_mask = attention_mask if span is None else span
            input_ids = None
        try:
            return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   **kwargs)
        finally:
            if self.grid.get("rope2d"):
                self.model.rotary_emb.grid_positions = None

    # Callers read the parent's signature (e.g. which name the KV-cache argument has in this transformers).
    forward.__signature__ = inspect.signature(LlamaForCausalLM.forward)


class GridRotaryEmbedding(LlamaRotaryEmbedding):
    """Rotary embedding with 2-D positions for understanding images (as Qwen2-VL's M-RoPE, with the two axes
    interleaved over the frequencies as in Qwen3-VL, so that neither axis gets only the fast or only the slow
    ones): even frequencies turn with the row position, odd ones with the column position. The model sets
    `grid_positions` (from GridLlamaForCausalLM.grid_positions) for one forward; text tokens have equal row and
    column positions, so text alone is rotated exactly as by the stock 1-D embedding, and so is a cached decode
    step."""

    grid_positions: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x, position_ids):
        if self.grid_positions is None:
            return super().forward(x, position_ids)
        rows, cols = self.grid_positions
        cos_r, sin_r = super().forward(x, rows)
        cos_c, sin_c = super().forward(x, cols)
        half = cos_r.shape[-1] // 2
        by_row = (torch.arange(half, device=cos_r.device) % 2 == 0).repeat(2)
        return torch.where(by_row, cos_r, cos_c), torch.where(by_row, sin_r, sin_c)


def same_span(cell_NS: torch.Tensor) -> torch.Tensor:
    """[N, S, S]: whether two tokens sit in the same understanding image span (`cell_NS` from grid_cells)."""
    j_S = torch.arange(cell_NS.shape[1], device=cell_NS.device)
    span_NS = torch.where(cell_NS >= 0, j_S - cell_NS, torch.full_like(cell_NS, -1))  # the span's first index
    return (span_NS[:, :, None] == span_NS[:, None, :]) & (span_NS[:, :, None] >= 0)


# Words that name a direction of the grid, and which ramp (and sign) they start from: rows grow downwards.
SPATIAL_WORDS = {"left": ("col", -1.0), "right": ("col", 1.0), "above": ("row", -1.0), "top": ("row", -1.0),
                 "below": ("row", 1.0), "bottom": ("row", 1.0)}


@torch.no_grad()
def ordinal_init(lm: GridLlamaForCausalLM, word_ids: dict[str, int] | None = None,
                 generator: torch.Generator | None = None) -> None:
    """Row and column tables as ramps along one random direction each (plus 10% noise); with `word_ids`
    (word -> token id), the direction words start on those same directions (SPATIAL_WORDS), so that with tied
    embeddings the logit of "left" is, from the first step, minus the column ramp of whatever the hidden state
    has read: the same shared-factor start as builtin.align_embeddings gives shapes and colours."""
    std = lm.config.initializer_range
    directions = {}
    for name, table in (("row", lm.row_embed), ("col", lm.col_embed)):
        n, d = table.weight.shape
        mid = (n - 1) / 2
        directions[name] = torch.randn(d, generator=generator) * std * 2
        ramp = (torch.arange(n, dtype=torch.float32) - mid) / mid
        table.weight.copy_(ramp[:, None] * directions[name][None] + 0.1 * std * torch.randn(n, d, generator=generator))
    E = lm.get_input_embeddings().weight
    for word, (axis, sign) in SPATIAL_WORDS.items():
        if word_ids and word in word_ids:
            E[word_ids[word]] = sign * directions[axis] + 0.1 * std * torch.randn(E.shape[1], generator=generator)


@torch.no_grad()
def directional_init(rel_bias: torch.nn.Parameter, strength: float = 2.0) -> None:
    """Heads 0-3 start looking one way each inside the image: at keys to the query's left, right, above and below
    (+strength on that side, -strength on the other, 0 in line); further heads start at 0. Like ordinal_init, a
    start that makes "what lies to my left" one head's job from the first step; every value trains."""
    H, R2, C2 = rel_bias.shape
    dr = torch.arange(R2, dtype=rel_bias.dtype) - (R2 - 1) // 2  # query row minus key row: > 0, key above
    dc = torch.arange(C2, dtype=rel_bias.dtype) - (C2 - 1) // 2  # > 0: key to the left
    ways = [dc.sign()[None].expand(R2, -1), -dc.sign()[None].expand(R2, -1), dr.sign()[:, None].expand(-1, C2),
            -dr.sign()[:, None].expand(-1, C2)]
    rel_bias.zero_()
    for h in range(min(H, len(ways))):
        rel_bias[h] = strength * ways[h]
