"""Train a testbed model on procedural data for a fixed wall-clock budget (rectified flow, bf16
autocast on CUDA, SDPA attention), write the checkpoint, then print mean ρ per layer at 3.125%."""
from __future__ import annotations

import copy
import math
import os
import time

import torch
import torch.nn.functional as F

from .data import make_batch
from .model import CONFIGS, DiT, DiTConfig, null_condition, save_checkpoint

DEFAULT_BATCH = {"image": 64, "video": 8, "tiny_image": 8, "tiny_video": 4}


def training_batch(cfg: DiTConfig, step: int, batch: int, generator: torch.Generator, device,
                   seed: int = 0, cond_drop: float = 0.1):
    """(x_t, t, cond, target) for one step: scenes of data seed ``seed * 1_000_003 + step``, the
    condition dropped to null with probability ``cond_drop``, t logit-normal, target = noise - x0."""
    x0, cond = make_batch(seed * 1_000_003 + step, batch, cfg.frames, cfg.size, device)
    cond = cond.to(device)
    drop = torch.rand(batch, generator=generator, device=device) < cond_drop
    cond = torch.where(drop[:, None], null_condition(cond), cond)
    t = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    noise = torch.randn(x0.shape, generator=generator, device=device)
    tt = t.view(-1, 1, 1, 1, 1)
    return (1 - tt) * x0 + tt * noise, t, cond, noise - x0


def loss_of(model: DiT, xt, t, cond, target, autocast: bool) -> torch.Tensor:
    with torch.autocast(xt.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred = model(xt, t, cond)
    return F.mse_loss(pred.float(), target)


def train(name: str, minutes: float, out_path: str, batch: int | None = None, lr: float = 8e-4,
          warmup_steps: int = 100, cond_drop: float = 0.1, seed: int = 0, device: str | None = None,
          log_every: float = 10.0, probe: bool = True, log=print) -> dict:
    """Train ``CONFIGS[name]`` for ``minutes`` of wall clock (the loop; model build, save and the ρ
    probe come on top). lr: linear warm-up over ``warmup_steps``, then a cosine to 0 over the budget.
    At each log line a non-finite loss restores the last good weights and halves the lr."""
    cfg = CONFIGS[name]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch = batch or DEFAULT_BATCH[name]
    torch.manual_seed(seed)
    model = DiT(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0, fused=cuda)
    generator = torch.Generator(device).manual_seed(seed + 1)
    budget = 60.0 * minutes
    log(f"training {name}: grid {cfg.grid} + {cfg.cond_tokens} condition tokens ({cfg.tokens} tokens), "
        f"{cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} heads, {params / 1e6:.2f}M parameters; "
        f"batch {batch}, lr {lr}, {minutes:g} min on {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    start = time.time()
    last_log, step, running, count = start, 0, torch.zeros((), device=device), 0
    curve, restarts = [], 0
    good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    model.train()
    while True:
        elapsed = time.time() - start
        if elapsed >= budget:
            break
        scale = min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        loss = loss_of(model, *training_batch(cfg, step, batch, generator, device, seed, cond_drop), autocast=cuda)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.detach()
        count += 1
        step += 1
        if time.time() - last_log >= log_every or step == 1:
            mean = float(running) / count
            now = time.time()
            if not math.isfinite(mean):
                restarts += 1
                lr *= 0.5
                model.load_state_dict(good[0])
                opt.load_state_dict(good[1])
                log(f"  step {step:6d}  loss {mean}: restored the weights of the last log line, lr now {lr:.2e}")
            else:
                good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
                tokens = step * batch * cfg.image_tokens
                curve.append((step, round(now - start, 1), round(mean, 5)))
                log(f"  step {step:6d}  loss {mean:.4f}  lr {lr * scale:.2e}  {tokens / (now - start):,.0f} tokens/s  "
                    f"{now - start:6.1f}s")
            running.zero_()
            count, last_log = 0, now
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.time() - start
    if count:
        mean = float(running) / count
        if math.isfinite(mean):
            curve.append((step, round(elapsed, 1), round(mean, 5)))
        else:
            model.load_state_dict(good[0])
            log(f"  final loss {mean}: saving the weights of the last good log line")
    model.eval()
    summary = {"steps": step, "batch": batch, "lr": lr, "minutes": minutes, "seed": seed, "restarts": restarts,
               "samples_seen": step * batch, "final_loss": curve[-1][2] if curve else None,
               "elapsed_s": round(elapsed, 1), "device": torch.cuda.get_device_name(device) if cuda else "cpu",
               "torch": torch.__version__}
    log(f"trained {step} steps ({step * batch} samples) in {elapsed:.1f}s, "
        f"{step * batch * cfg.image_tokens / max(elapsed, 1e-9):,.0f} tokens/s; final loss {summary['final_loss']}")
    save_checkpoint(model, out_path, {"train_summary": summary, "loss_curve": curve})
    log(f"wrote {out_path} ({os.path.getsize(out_path) / 1e6:.1f} MB)")
    if probe:
        from .evaluate import rho_probe
        t0 = time.time()
        summary["rho"] = rho_probe(model, steps=20 if not name.startswith("tiny") else 8, log=log)
        log(f"rho probe: {time.time() - t0:.1f}s")
    return summary
