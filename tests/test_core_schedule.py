"""Schedules over runs of 1 to 50 steps, partial runs, per-step density, and the run-state store."""
import pytest
import torch

from rettention import (CAPTURE, DENSE, SPARSE, AttentionStats, Schedule, SparseMask, StatsStore, TokenLayout,
                        UnitWeight, attend_full, run_progress, weight_rule)


def check_plan_is_consistent(plan, schedule):
    for i, mode in enumerate(plan.modes):
        if mode == SPARSE:          # a sparse step follows its capture within the interval
            c = i - plan.steps_since_capture[i]
            assert plan.modes[c] == CAPTURE and all(m == SPARSE for m in plan.modes[c + 1:i])
            assert 1 <= plan.steps_since_capture[i] < schedule.capture_every
            assert plan.densities[i] == plan.densities[c]
        if mode == CAPTURE:
            assert i + 1 < len(plan.modes) and plan.modes[i + 1] == SPARSE
        if mode == DENSE:
            assert plan.densities[i] is None


@pytest.mark.parametrize("steps, expected", [
    (1, "D"),
    (4, "DCSS"),
    (8, "DDCSSSSD"),
    (20, "DDDDDCSSSSCSSSSCSSSS"),
    (50, "D" * 13 + ("CSSSS" * 8)[:37]),
])
def test_default_schedule_over_run_lengths(steps, expected):
    schedule = Schedule()
    plan = schedule.plan(run_progress(steps), density=0.0625)
    assert plan.summary() == expected
    check_plan_is_consistent(plan, schedule)
    assert (plan.note != "") == (SPARSE not in plan.modes)


def test_a_run_too_short_is_all_dense_with_a_note():
    plan = Schedule(warmup=0.5, capture_every=5).plan(run_progress(2), density=0.1)
    assert plan.summary() == "DD" and "all dense" in plan.note


def test_partial_runs_skip_the_warmup_they_already_passed():
    # KSamplerAdvanced steps 10..19 of 20 (or denoise 0.5): starts past the warm-up
    plan = Schedule().plan(run_progress(10, first_step=10, total_steps=20), density=0.1)
    assert plan.summary() == "CSSSSCSSSS"
    # steps 0..5 of 20: warm-up then one capture group cut short by the end of the run
    plan = Schedule().plan(run_progress(7, first_step=0, total_steps=20), density=0.1)
    assert plan.summary() == "DDDDDCS"
    with pytest.raises(ValueError, match="do not fit"):
        run_progress(10, first_step=15, total_steps=20)


def test_dense_tail_and_warmup_fractions():
    plan = Schedule(warmup=0.1, capture_every=4, dense_tail=0.2).plan(run_progress(20), density=0.1)
    assert plan.summary() == "DD" + "CSSS" * 3 + "CS" + "DDDD"
    plan = Schedule(warmup=0.0).plan(run_progress(6), density=0.1)
    assert plan.summary() == "CSSSSD"


def test_density_from_takes_effect_at_the_next_capture():
    schedule = Schedule(warmup=0.2, capture_every=3, density_from=((0.5, 0.03), (0.0, 0.2)))
    plan = schedule.plan(run_progress(10), density=0.1)
    assert plan.summary() == "DDCSSCSSCS"
    assert plan.densities == (None, None, 0.2, 0.2, 0.2, 0.03, 0.03, 0.03, 0.03, 0.03)
    check_plan_is_consistent(plan, schedule)


def test_schedule_carries_its_weight_rule():
    assert Schedule(weight=weight_rule("rho_ramp", ramp=0.02)).weight.ramp == 0.02
    assert Schedule().weight.name == "one"      # the testbed's evidence (README)


@pytest.mark.parametrize("bad, message", [
    (dict(warmup=1.5), "warmup"), (dict(capture_every=1), "capture_every"), (dict(capture_every=2.5), "capture_every"),
    (dict(dense_tail=-0.1), "dense_tail"), (dict(density_from=((0.5, 0.0),)), "density"),
    (dict(density_from=((2.0, 0.1),)), "progress"),
])
def test_bad_schedule_parameters_name_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**bad)
    with pytest.raises(ValueError, match="weight rule"):
        weight_rule("lambda")


def test_progress_must_not_go_backwards():
    with pytest.raises(ValueError, match="progress"):
        Schedule().plan([0.0, 0.5, 0.4], density=0.1)


# --- the run's stats store ---------------------------------------------------------------------------

def _stats(layout, heads=2, seed=0, weight=None):
    mask = SparseMask(layout, 0.25, "band", block_size=16)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, layout.n_tokens, 64, generator=g) for _ in range(3))
    kwargs = {} if weight is None else {"weight": weight}
    return q, mask, attend_full(q, k, v, mask, **kwargs)[1]


def test_store_keys_by_layer_and_chunk_and_counts_bytes():
    layout = TokenLayout((1, 8, 8))
    q, mask, stats = _stats(layout)
    with StatsStore() as store:
        store.put("block.3", ("uuid-cond",), stats)
        store.put("block.3", ("uuid-uncond",), stats)
        assert store.get("block.3", ("uuid-cond",), q, mask) is stats
        assert store.get("block.4", ("uuid-cond",), q, mask) is None
        assert store.nbytes == 2 * stats.nbytes == 2 * (2 * 64 * 4 + 2 * 64 * 64 * 4)
        store.put("block.3", ("uuid-cond",), stats)               # replacing does not double count
        assert store.nbytes == 2 * stats.nbytes and store.peak_nbytes == store.nbytes
    assert len(store) == 0 and store.nbytes == 0 and store.peak_nbytes == 2 * stats.nbytes


def test_store_lookup_with_another_shape_or_mask_is_a_miss():
    q, mask, stats = _stats(TokenLayout((1, 8, 8)))
    store = StatsStore()
    store.put(0, (0,), stats)
    bigger_q, bigger_mask, _ = _stats(TokenLayout((1, 8, 12)))     # the user changed resolution
    assert store.get(0, (0,), bigger_q, bigger_mask) is None
    assert store.get(0, (0,), q.expand(2, -1, -1, -1), mask) is None    # the batch was split differently
    assert store.get(0, (1,), q, mask) is None                          # a chunk never captured
    other_density = SparseMask(mask.layout, 0.5, "band", block_size=16)
    assert store.get(0, (0,), q, other_density) is None
    assert store.get(0, (0,), q, mask) is stats
    store.close()
    assert store.get(0, (0,), q, mask) is None


def test_store_serves_cfg_chunks_however_comfyui_batches_them():
    layout = TokenLayout((1, 8, 8))
    mask = SparseMask(layout, 0.25, "band", block_size=16)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, layout.n_tokens, 64, generator=g) for _ in range(3))
    stats = attend_full(q, k, v, mask)[1]                      # captured on the batch [cond, uncond]
    store = StatsStore()
    store.put(0, ("cond", "uncond"), stats)
    assert store.get(0, ("cond", "uncond"), q, mask) is stats             # the same batch: no copy
    uncond = store.get(0, ("uncond",), q[1:], mask)                      # uncond alone: a view of its rows
    assert uncond.residual.data_ptr() == stats.residual[1:].data_ptr()
    swapped = store.get(0, ("uncond", "cond"), q, mask)
    assert torch.equal(swapped.rho, stats.rho.flip(0)) and torch.equal(swapped.residual, stats.residual.flip(0))
    split = StatsStore()                                       # captured as two forwards, used as one
    split.put(0, ("cond",), stats.batch_rows(slice(0, 1)))
    split.put(0, ("uncond",), stats.batch_rows(slice(1, 2)))
    joined = split.get(0, ("cond", "uncond"), q, mask)
    assert torch.equal(joined.residual, stats.residual) and split.nbytes == stats.nbytes
    assert split.get(0, ("cond", "uncond"), q, mask) is joined and len(split) == 1      # joined once, kept
    assert split.get(0, ("uncond",), q[1:], mask).residual.data_ptr() == joined.residual[1:].data_ptr()


def test_stats_remember_their_rule():
    _, _, stats = _stats(TokenLayout((1, 8, 8)), weight=UnitWeight())
    assert isinstance(stats, AttentionStats) and stats.weight == UnitWeight()
