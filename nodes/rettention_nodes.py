"""The Re-ttention nodes (V3 schema): Patch Model, Sparsity Schedule, Calibrate Stats, Load Stats.

Node inputs are checked here, at queue time, and a bad one raises a ValueError naming the input."""
from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

from .. import rettention
from ..rettention import MASK_KINDS, CalibratedWeight, Schedule
from ..rettention.calibration import CalibrationData
from .config import RESIDUAL_DTYPES, PatchConfig
from .families import family_of
from .inputs import WEIGHT_CHOICES, check_unit, schedule_from_widgets
from .model_folders import NONE, load_stats, stats_files, stats_fingerprint, stats_folder
from .module_forwards import module_paths
from .override import existing_override
from .wrappers import install

log = logging.getLogger("rettention")


def torch_path_asked() -> bool:
    """RETTENTION_TORCH_PATH=1: run the PyTorch path where the kernels cannot (tests, debugging)."""
    return os.environ.get("RETTENTION_TORCH_PATH") == "1"

Schedule_ = io.Custom("RETTENTION_SCHEDULE")
Stats_ = io.Custom("RETTENTION_STATS")
MASK_CHOICES = ["auto", *MASK_KINDS]


class SparsitySchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RettentionSparsitySchedule",
            display_name="Re-ttention Sparsity Schedule",
            category="model_patches/rettention",
            description="When Re-ttention runs sparse: dense warm-up, a full-attention capture step every N "
                        "steps with sparse steps between, an optional dense tail, per-progress density, and the "
                        "rule that reshapes the sparse output.",
            inputs=[
                io.Float.Input("start_percent", default=0.25, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the denoising (0 = pure noise) run dense before the first "
                                       "capture step. The paper uses 0.25-0.3."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the denoising after which every step is dense again "
                                       "(1.0: sparse to the end)."),
                io.Int.Input("capture_every", default=5, min=2, max=100,
                             tooltip="A full-attention capture step, then capture_every - 1 sparse steps "
                                     "that reuse its statistics."),
                io.String.Input("density_steps", default="", multiline=False,
                                tooltip="Optional 'progress:density' pairs, e.g. '0.5:0.03, 0.8:0.02': from that "
                                        "progress on, use that density (takes effect at the next capture)."),
                io.Combo.Input("weight", options=WEIGHT_CHOICES, default="one",
                               tooltip="Reshape weight w in out = w*O_sparse + R: one (residual sharing, the "
                                       "default: best without a stats file on the pack's testbed), rho (paper, "
                                       "lambda=0), rho_ramp (rho + lambda*k), calibrated (fitted per layer and "
                                       "head from a stats file: best of all)."),
                io.Float.Input("ramp", default=0.04, min=0.0, max=1.0, step=0.005,
                               tooltip="lambda for the rho_ramp rule: added to rho per sparse step since the capture."),
            ],
            outputs=[Schedule_.Output(display_name="schedule", tooltip="Connect to Re-ttention Patch Model.")],
        )

    @classmethod
    def execute(cls, start_percent, end_percent, capture_every, density_steps, weight, ramp) -> io.NodeOutput:
        return io.NodeOutput(schedule_from_widgets(start_percent, end_percent, capture_every, density_steps,
                                                   weight, ramp))


class LoadStats(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RettentionLoadStats",
            display_name="Re-ttention Load Stats",
            category="model_patches/rettention",
            description="Load a stats file written by Re-ttention Calibrate Stats (models/rettention).",
            inputs=[io.Combo.Input("stats_file", options=stats_files(),
                                   tooltip="A file in models/rettention written by Calibrate Stats.")],
            outputs=[Stats_.Output(display_name="stats", tooltip="Connect to Re-ttention Patch Model.")],
        )

    @classmethod
    def fingerprint_inputs(cls, stats_file=NONE, **kwargs):
        return stats_fingerprint(stats_file)

    @classmethod
    def execute(cls, stats_file) -> io.NodeOutput:
        if stats_file == NONE:
            raise ValueError("stats_file: choose a file (none are in models/rettention yet?)")
        return io.NodeOutput(load_stats(stats_file, "stats_file"))


class PatchModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RettentionPatchModel",
            display_name="Re-ttention Patch Model",
            category="model_patches/rettention",
            description="Sparse self-attention for Diffusion Transformers, corrected with statistics cached at "
                        "periodic full-attention steps. Returns a patched copy; the input model is untouched.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT model (Flux, SD3, Wan, HunyuanVideo, Qwen-Image, PixArt, ...). "
                                                "Other models pass through unchanged."),
                io.Float.Input("density", default=0.0625, min=0.005, max=1.0, step=0.0005,
                               tooltip="Fraction of the attention a sparse step computes (0.03-0.12 typical; "
                                       "1.0 reproduces dense attention)."),
                io.Combo.Input("mask", options=MASK_CHOICES, default="auto",
                               tooltip="Which keys a query sees: auto = local3d for video, a 2-D neighbourhood "
                                       "(or the paper's band for PixArt / Hunyuan-DiT) for images."),
                io.Combo.Input("residual_dtype", options=list(RESIDUAL_DTYPES), default="auto",
                               tooltip="Storage dtype of the cached residual R (auto: the model's attention dtype). "
                                       "float32 doubles the memory held between capture steps."),
                io.Boolean.Input("dense_first_last", default=False,
                                 tooltip="Keep the first and last attention layers dense."),
                io.Combo.Input("stats_file", options=stats_files(), default=NONE,
                               tooltip="Optional stats file from Calibrate Stats: gives the calibrated weight rule "
                                       "and keeps dense the layers whose recorded error is above error_threshold."),
                io.Float.Input("error_threshold", default=0.05, min=0.0, max=10.0, step=0.005,
                               tooltip="With a stats file: layers whose recorded one-step relative error (with the "
                                       "schedule's rule) is above this stay dense."),
                Schedule_.Input("schedule", optional=True,
                                tooltip="From Re-ttention Sparsity Schedule; default: 25% dense warm-up, capture every "
                                        "5 steps, w = 1 (residual sharing; calibrated when a stats file is given)."),
                Stats_.Input("stats", optional=True,
                             tooltip="From Re-ttention Load Stats (instead of stats_file)."),
            ],
            outputs=[io.Model.Output(tooltip="The patched model.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, stats_file=NONE, **kwargs):
        """A stats file written again (Calibrate Stats) makes the node run again."""
        return stats_fingerprint(stats_file)

    @classmethod
    def execute(cls, model, density, mask, residual_dtype, dense_first_last, stats_file, error_threshold,
                schedule=None, stats=None) -> io.NodeOutput:
        density = check_unit("density", density, open_low=True)
        if mask not in MASK_CHOICES:
            raise ValueError(f"mask must be one of {MASK_CHOICES}, got {mask!r}")
        if residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(f"residual_dtype must be one of {list(RESIDUAL_DTYPES)}, got {residual_dtype!r}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise ValueError("schedule: expected a RETTENTION_SCHEDULE from Re-ttention Sparsity Schedule")
        threshold = float(error_threshold)
        if not threshold >= 0:
            raise ValueError(f"error_threshold must be >= 0, got {error_threshold}")
        if stats is not None and not isinstance(stats, CalibrationData):
            raise ValueError("stats: expected a RETTENTION_STATS from Re-ttention Load Stats")
        if stats is None and stats_file and stats_file != NONE:
            stats = load_stats(stats_file, "stats_file")

        family = family_of(model.model)
        if family is None:
            log.warning("Re-ttention: %s is not a supported model family; passed through unchanged",
                        type(model.model).__name__)
            return io.NodeOutput(model)
        if stats is not None and stats.metadata.get("family") != family.name:
            raise ValueError(f"stats: the stats file was recorded on a {stats.metadata.get('family')!r} model, "
                             f"this model is {family.name!r}")
        if schedule is None:
            schedule = Schedule(weight=CalibratedWeight(torch.ones(1))) if stats is not None else Schedule()
        rule_name = schedule.weight.name
        if rule_name == "calibrated" and stats is None:
            raise ValueError("schedule: the calibrated weight rule needs a stats file (stats_file or stats)")
        dense_layers = stats.dense_layers(threshold, rule_name) if stats is not None else frozenset()
        if dense_layers:
            log.info("Re-ttention: %d of %d layers stay dense (recorded error above %g)",
                     len(dense_layers), stats.layers, threshold)

        patched = model.clone()
        paths = module_paths(patched.model, family.module_kind) if family.route == "modules" else ()
        config = PatchConfig(
            family=family, density=density, mask_kind=mask, schedule=schedule, residual_dtype=residual_dtype,
            dense_ends=bool(dense_first_last), calibration=stats, dense_layers=dense_layers,
            chained_override=existing_override(patched), module_paths=paths,
            node_id=getattr(getattr(cls, "hidden", None), "unique_id", None), torch_path=torch_path_asked())
        install(patched, config)
        return io.NodeOutput(patched)


class CalibrateStats(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RettentionCalibrateStats",
            display_name="Re-ttention Calibrate Stats",
            category="model_patches/rettention",
            description="When sampled, runs dense attention and records per layer and head the rho trajectory, "
                        "a fitted reshape weight w(sigma) and each weight rule's error for the chosen mask; at the "
                        "end of the run writes models/rettention/<name>.safetensors for Patch Model.",
            inputs=[
                io.Model.Input("model", tooltip="The model to calibrate (its output is unchanged: attention stays dense)."),
                io.String.Input("name", default="calibration",
                                tooltip="File name (without extension) in models/rettention; overwritten each run."),
                io.Float.Input("density", default=0.0625, min=0.005, max=1.0, step=0.0005,
                               tooltip="The density to evaluate the weight rules at (use the one you will patch with)."),
                io.Combo.Input("mask", options=MASK_CHOICES, default="auto",
                               tooltip="The mask to evaluate (use the one you will patch with)."),
                io.Float.Input("ramp", default=0.04, min=0.0, max=1.0, step=0.005,
                               tooltip="lambda for the rho_ramp rule whose error is recorded."),
            ],
            outputs=[io.Model.Output(tooltip="The model that records statistics while it samples.")],
        )

    @classmethod
    def execute(cls, model, name, density, mask, ramp) -> io.NodeOutput:
        name = (name or "").strip()
        if name.endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        if not name or os.path.basename(name) != name or name.startswith("."):
            raise ValueError(f"name must be a plain file name, got {name!r}")
        density = check_unit("density", density, open_low=True)
        if mask not in MASK_CHOICES:
            raise ValueError(f"mask must be one of {MASK_CHOICES}, got {mask!r}")
        family = family_of(model.model)
        if family is None:
            raise ValueError(f"model: {type(model.model).__name__} is not a model family Re-ttention supports")
        patched = model.clone()
        paths = module_paths(patched.model, family.module_kind) if family.route == "modules" else ()
        metadata = (("family", family.name), ("mask", mask), ("density", repr(density)),
                    ("ramp", repr(float(ramp))), ("pack_version", rettention.__version__))
        config = PatchConfig(
            family=family, density=density, mask_kind=mask, chained_override=existing_override(patched),
            module_paths=paths, calibrate_path=os.path.join(stats_folder(), name + ".safetensors"),
            calibrate_ramp=check_unit("ramp", ramp), calibrate_metadata=metadata, torch_path=torch_path_asked())
        install(patched, config)
        return io.NodeOutput(patched)


NODES = [PatchModel, SparsitySchedule, CalibrateStats, LoadStats]
