"""``python -m rettention.testbed train|eval``: train the testbed models, run the fidelity benchmark."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .evaluate import CHECKPOINT_DIR, DENSITIES, KINDS, METHODS, EvalOptions

# tiny smoke-test checkpoints go to the ignored out/ folder, not next to the real ones
TINY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "out", "testbed_tiny")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str, allowed) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    for name in names:
        if name not in allowed:
            raise SystemExit(f"unknown {name!r}; choose from {', '.join(allowed)}")
    return names


DEFAULTS = {
    "minutes": {"image": 3.0, "video": 4.0, "tiny_image": 0.1, "tiny_video": 0.1},
    "seeds": {"image": 8, "video": 4, "tiny_image": 2, "tiny_video": 2},
    "calib_seeds": {"image": 4, "video": 2, "tiny_image": 2, "tiny_video": 2},
    "batch": {"image": None, "video": None, "tiny_image": None, "tiny_video": None},
}


def _per_model(values: tuple, models, default: str) -> dict:
    """The defaults, one value for every model, or one per model in order."""
    if not values:
        return {m: DEFAULTS[default][m] for m in models}
    if len(values) == 1:
        return {m: values[0] for m in models}
    if len(values) != len(models):
        raise SystemExit(f"give one value or one per model ({', '.join(models)}), got {values}")
    return dict(zip(models, values))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rettention.testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train testbed models for a wall-clock budget")
    tr.add_argument("--model", default="image,video", help="image, video or both (comma list)")
    tr.add_argument("--minutes", default="", help="training loop minutes, one value or one per model "
                    "(default 3 image, 4 video)")
    tr.add_argument("--batch", default="", help="batch size, one value or one per model (default 64 image, 8 video)")
    tr.add_argument("--lr", type=float, default=8e-4)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default=None, help="checkpoint folder, {model}.safetensors (default: "
                    "rettention/testbed/checkpoints; with --tiny out/testbed_tiny)")
    tr.add_argument("--tiny", action="store_true", help="tiny CPU-sized models (smoke test)")
    tr.add_argument("--no-probe", action="store_true", help="skip the rho probe after training")
    tr.add_argument("--device", default=None)

    ev = sub.add_parser("eval", help="fidelity benchmark against full attention")
    ev.add_argument("--model", default="image,video")
    ev.add_argument("--checkpoints", default=None, help="checkpoint folder (default: rettention/testbed/checkpoints; "
                    "with --tiny out/testbed_tiny, a random tiny model where none is there)")
    ev.add_argument("--out", default=None, help="folder for testbed_eval.json and the PNG grids")
    ev.add_argument("--steps", type=int, default=20)
    ev.add_argument("--cfg", type=float, default=3.5, help="classifier-free guidance scale")
    ev.add_argument("--shift", type=float, default=1.0, help="timestep shift of the Euler sampler")
    ev.add_argument("--warmup", default="0.25", help="dense warm-up (fraction of steps); comma list sweeps")
    ev.add_argument("--capture-every", default="5", help="capture interval; comma list sweeps")
    ev.add_argument("--densities", default=",".join(str(d) for d in DENSITIES))
    ev.add_argument("--kinds", default=",".join(KINDS))
    ev.add_argument("--methods", default=",".join(METHODS))
    ev.add_argument("--seeds", default="", help="evaluated seeds, one value or one per model (default 8 image, "
                    "4 video)")
    ev.add_argument("--calib-seeds", default="", help="calibration seeds (other seeds than the evaluated ones), "
                    "one value or one per model (default 4 image, 2 video)")
    ev.add_argument("--ramp", type=float, default=0.04, help="lambda of the rettention_ramp method")
    ev.add_argument("--pictures", type=int, default=4, help="samples in the PNG grid")
    ev.add_argument("--no-layer-errors", action="store_true", help="skip the per-layer error (saves a dense "
                    "attention per sparse call)")
    ev.add_argument("--tune", action="store_true", help="let the Triton kernels autotune (default: first config)")
    ev.add_argument("--tiny", action="store_true", help="tiny models (random if no tiny checkpoint): smoke test")
    ev.add_argument("--device", default=None)

    args = parser.parse_args(argv)
    import torch

    def log(text=""):
        print(text, flush=True)

    models = _names(args.model, ("image", "video"))
    if args.tiny:
        models = tuple(f"tiny_{m}" for m in models)
    folder = (args.out if args.command == "train" else args.checkpoints) or (TINY_DIR if args.tiny else CHECKPOINT_DIR)
    t0 = time.time()
    if args.command == "train":
        os.environ.setdefault("RETTENTION_NO_TUNE", "1")
        from .train import train

        minutes = _per_model(_floats(args.minutes), models, "minutes")
        batch = _per_model(_ints(args.batch), models, "batch")
        for name in models:
            path = os.path.join(folder, f"{name}.safetensors")
            train(name, minutes[name], path, batch=batch[name], lr=args.lr, seed=args.seed, device=args.device,
                  probe=not args.no_probe, log=log)
            log("")
    else:
        if not args.tune:
            os.environ.setdefault("RETTENTION_NO_TUNE", "1")
        from .evaluate import run_benchmark

        seeds = _per_model(_ints(args.seeds), models, "seeds")
        calib = _per_model(_ints(args.calib_seeds), models, "calib_seeds")
        opts = {name: EvalOptions(steps=args.steps, guidance=args.cfg, shift=args.shift,
                                  warmups=_floats(args.warmup), capture_everys=_ints(args.capture_every),
                                  densities=_floats(args.densities), kinds=_names(args.kinds, KINDS),
                                  methods=_names(args.methods, METHODS), seeds=seeds[name], calib_seeds=calib[name],
                                  ramp=args.ramp, measure=not args.no_layer_errors, pictures=args.pictures)
                for name in models}
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        run_benchmark(models, folder, args.out, opts, device, log)
    log(f"total {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
