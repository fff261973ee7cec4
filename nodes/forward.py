"""ForwardContext: one model forward (token grids, text length, CFG chunks, the layer counter) and the
dispatch of each of its attention calls: Re-ttention for self-attention over this forward's image tokens,
ComfyUI's own attention (``delegate``) for everything else.

    ComfyUI's attention call -> attention_override (override.py) -> ForwardContext.attend -> the core
    (rettention.attend_full / attend_sparse, which check the inputs) -> the kernels
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..rettention import CAPTURE, DENSE, SPARSE, RhoWeight, attend_full, attend_sparse, kernels_unavailable
from .config import RESIDUAL_DTYPES
from .families import default_mask_kind, self_attention_layout
from .run_state import RunState


class ForwardContext:
    """One model forward: geometry, CFG chunks, and the layer counter."""

    def __init__(self, run: RunState, grids, text_tokens: int | None, uuids, cond_or_uncond):
        self.run = run
        self.grids = grids
        self.text_tokens = text_tokens
        self.uuids = list(uuids) if uuids else []
        self.cond_or_uncond = list(cond_or_uncond) if cond_or_uncond else []
        self.layer = 0
        self._layouts: dict = {}
        self.ambiguous = False
        family = run.config.family
        if family.order == "image" and text_tokens is not None:
            image_counts = {g[0] * g[1] * g[2] for g in grids}
            if text_tokens in image_counts:
                self.ambiguous = True
                run.note_once("ambiguous", f"{family.name}: the text has as many tokens ({text_tokens}) as the "
                              "image, so self- and cross-attention cannot be told apart; dense attention this run")

    def layout(self, n_tokens: int):
        if n_tokens not in self._layouts:
            self._layouts[n_tokens] = self_attention_layout(self.run.config.family, self.grids, n_tokens,
                                                            self.text_tokens)
        return self._layouts[n_tokens]

    def chunks(self, batch: int) -> tuple:
        """The CFG chunks (uuids) the batch is made of, in batch order, equal rows each."""
        if self.uuids and batch % len(self.uuids) == 0:
            return tuple(self.uuids)
        return ("batch",)

    def _mode(self, layer: int, mask, refused: str | None) -> str:
        run, config = self.run, self.run.config
        if mask is not None:
            run.note_once("mask", f"{config.family.name}: an attention mask is set on self-attention; "
                          "those calls stay dense")
            return DENSE
        if refused is not None:
            run.note_once(f"refused-{refused}", f"{config.family.name}: the attention call has {refused}; "
                          "those calls stay dense")
            return DENSE
        if layer in run.failed_layers:
            return DENSE
        if run.mode != DENSE and (layer in config.dense_layers or (config.dense_ends and (
                layer == 0 or (run.layers_per_forward is not None and layer == run.layers_per_forward - 1)))):
            return DENSE
        return run.mode

    @staticmethod
    def _refused(q, k, v, heads: int, skip_reshape: bool, extra: dict) -> str | None:
        """What of this call the pack does not do as ComfyUI would (then ComfyUI's attention runs it)."""
        if skip_reshape:
            grouped = not (k.dim() == v.dim() == 4 and k.shape[1] == v.shape[1] == q.shape[1])
        else:           # (B, N, H*D), or any layout with H*D values a token (SD3 passes v as (B, N, H, D))
            width = [t.numel() // max(1, t.shape[0] * t.shape[1]) for t in (q, k, v)]
            grouped = not width[0] == width[1] == width[2]
        if grouped:
            return "fewer key/value heads than query heads (grouped-query attention)"
        for name, value in extra.items():
            if name == "scale":
                dim = q.shape[-1] if skip_reshape else q.shape[-1] // heads
                if value is not None and not math.isclose(float(value), dim ** -0.5, rel_tol=1e-6):
                    return f"a softmax scale ({float(value):g}) other than 1/sqrt(head dim)"
            elif name != "enable_gqa":          # with equal head counts GQA changes nothing
                return f"the keyword argument {name!r}"
        return None

    def attend(self, q, k, v, heads: int, mask, skip_reshape: bool, skip_output_reshape: bool,
               delegate: Callable[[], torch.Tensor], extra: dict | None = None) -> torch.Tensor:
        """One attention call. ``extra``: the call's other keyword arguments (``scale``, ...)."""
        run = self.run
        n_q = q.shape[2] if skip_reshape else q.shape[1]
        n_k = k.shape[2] if skip_reshape else k.shape[1]
        layout = None if n_q != n_k or self.ambiguous else self.layout(n_q)
        if layout is None:
            run.count("passthrough")
            return delegate()
        layer = self.layer
        self.layer += 1
        mode = self._mode(layer, mask, self._refused(q, k, v, heads, skip_reshape, extra or {}))
        if mode == DENSE:
            run.count(DENSE)
            return run.times.timed(DENSE, n_q, q.device, delegate)
        if not run.config.torch_path:
            problem = kernels_unavailable(q.device)
            if problem:                 # the PyTorch path would be slower than ComfyUI's dense attention
                run.note_once("kernels", f"{problem}; dense attention (the kernels need an NVIDIA GPU of compute "
                              "capability 8.0+, triton >= 3.4 and torch >= 2.8)")
                run.count(DENSE)
                return run.times.timed(DENSE, n_q, q.device, delegate)

        batch = q.shape[0]
        if skip_reshape:
            qh, kh, vh = q, k, v
        else:
            dim = q.shape[-1] // heads
            qh, kh, vh = (t.view(batch, t.shape[1], heads, dim).transpose(1, 2) for t in (q, k, v))
        config = run.config
        kind = config.mask_kind if config.mask_kind != "auto" else default_mask_kind(config.family, layout.grid)
        try:
            sparse_mask = run.mask_for(layout, run.density, kind)
            if run.calibrating:
                out = self._calibrate(layer, qh, kh, vh, sparse_mask)
            else:
                step = self._sparse if mode == SPARSE else self._capture
                out = run.times.timed(mode, n_q, q.device, lambda: step(layer, qh, kh, vh, sparse_mask))
        except ValueError as error:         # inputs the core does not take (head dim, dtype, ...)
            run.note_once(f"inputs-{error}", f"{config.family.name}: {error}; dense attention for these calls")
            run.count(DENSE)
            return delegate()
        except Exception as error:          # noqa: BLE001 - the one fallback: never end the user's run
            run.fail_layer(layer, mode, error)
            run.count(DENSE)
            return delegate()
        if skip_output_reshape:
            return out
        return out.transpose(1, 2).reshape(batch, n_q, -1)

    def _capture(self, layer, q, k, v, mask):
        run = self.run
        weight = run.weight_for(layer, q.shape[1])
        out, stats = attend_full(q, k, v, mask, weight=weight,
                                 residual_dtype=RESIDUAL_DTYPES[run.config.residual_dtype])
        run.count(CAPTURE)
        run.store.put(layer, self.chunks(q.shape[0]), stats)
        return out

    def _sparse(self, layer, q, k, v, mask):
        run = self.run
        stats = run.store.get(layer, self.chunks(q.shape[0]), q, mask)
        if stats is None:
            run.note_once(f"miss-{layer}", f"no captured stats for layer {layer} at step {run.step}; "
                          "capturing now")
            return self._capture(layer, q, k, v, mask)
        out = attend_sparse(q, k, v, mask, stats, weight=stats.weight, steps_since_capture=run.since)
        run.count(SPARSE)
        return out

    def _calibrate(self, layer, q, k, v, mask):
        run = self.run
        out, stats = attend_full(q, k, v, mask, weight=RhoWeight(), residual_dtype=torch.float32)
        run.count(CAPTURE)
        if run.recorder is not None:
            chunks = self.chunks(q.shape[0])
            size = q.shape[0] // len(chunks)
            for i, chunk in enumerate(chunks):
                rows = slice(i * size, (i + 1) * size)
                run.recorder.record(layer, chunk, run.step, out[rows], stats.batch_rows(rows))
        return out
