"""The divergence guard and its policy, piece by piece: the check of a step, the runs of
roll-backs, the policy's decisions, the learning-rate reduction and the last good state,
against independent computations (a plain Python count, a real Adam step)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_lightning.metrics.psnr import psnr
from dip_lightning.tasks.guard import (
    DivergenceGuard,
    LastGoodState,
    count_failed_run,
    diverged,
    lower_learning_rate,
    observed_psnr,
    policy_action,
)

finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    loss=st.one_of(finite, st.sampled_from([math.nan, math.inf, -math.inf])),
    current=finite,
    reference=st.one_of(finite, st.just(-math.inf)),
    drop=st.one_of(st.none(), st.floats(0.01, 100)),
    halted=st.booleans(),
)
def test_a_step_diverges_exactly_when_the_rule_says(
    loss: float, current: float, reference: float, drop: float | None, halted: bool
) -> None:
    expected = (
        halted
        or not math.isfinite(loss)
        or (drop is not None and torch.tensor(current) < torch.tensor(reference) - drop)
    )
    bad = diverged(torch.tensor(loss), torch.tensor(current), torch.tensor(reference), drop, halted)
    assert bad.dtype == torch.bool and bad.shape == ()
    assert bool(bad) == expected


def test_the_first_step_passes_any_psnr() -> None:
    """Before a good step the reference is -inf: only a non-finite loss diverges."""
    reference = torch.tensor(float("-inf"))
    assert not bool(diverged(torch.tensor(1e9), torch.tensor(-200.0), reference, 5.0))
    assert bool(diverged(torch.tensor(float("nan")), torch.tensor(30.0), reference, 5.0))


def test_observed_psnr_is_the_psnr_of_the_mse() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 3, 8, 8, generator=generator)
    mse = (x - y).square().mean()
    assert float(observed_psnr(mse)) == pytest.approx(float(psnr(x, y)), rel=1e-6)
    assert float(observed_psnr(torch.tensor(0.0))) == pytest.approx(120.0)


class GuardOnly(DivergenceGuard):
    """The guard's check on an observation of our choosing."""

    def __init__(self, loss_name: str, observation: torch.Tensor, reference: float) -> None:
        self.loss_name = loss_name
        self.observation = observation
        self.guard_psnr = torch.tensor(reference)
        self.guard_drop_db = 5.0
        self.halted = False


@pytest.mark.parametrize("loss_name", ["mse", "l1"])
def test_the_check_of_an_output_agrees_with_the_rule(loss_name: str) -> None:
    """The module's check measures the PSNR of ``A(x_hat)`` against the observation, whatever
    the data term, and decides with :func:`diverged`."""
    generator = torch.Generator().manual_seed(0)
    observation = torch.rand(1, 3, 8, 8, generator=generator)
    prediction = observation + 0.05 * torch.randn(1, 3, 8, 8, generator=generator)
    expected_psnr = float(psnr(prediction, observation))
    data = (prediction - observation).square().mean()
    if loss_name == "l1":
        data = (prediction - observation).abs().mean()
    for reference, expected in ((expected_psnr + 4.9, False), (expected_psnr + 5.1, True)):
        guard = GuardOnly(loss_name, observation, reference)
        bad = guard.check_output(prediction, data, data)
        assert float(guard._psnr_observed) == pytest.approx(expected_psnr, rel=1e-5)
        assert bool(bad) is expected and guard._bad is bad


def runs(flags: list[bool]) -> tuple[int, int]:
    """The current run of trues at the end of ``flags`` and the longest run."""
    current = longest = 0
    for flag in flags:
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return current, longest


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=60), st.lists(st.booleans(), max_size=60))
def test_the_run_counts_match_a_plain_count(first: list[bool], second: list[bool]) -> None:
    """The current and the longest run of roll-backs; after a check the longest restarts
    from the current run, as ``check_divergence`` does."""
    failed = torch.zeros((), dtype=torch.long)
    worst = torch.zeros((), dtype=torch.long)
    for flag in first:
        count_failed_run(failed, worst, torch.tensor(flag))
    assert (int(failed), int(worst)) == runs(first)
    worst.copy_(failed)  # the check
    for flag in second:
        count_failed_run(failed, worst, torch.tensor(flag))
    run = longest_since = runs(first)[0]
    for flag in second:
        run = run + 1 if flag else 0
        longest_since = max(longest_since, run)
    assert (int(failed), int(worst)) == (runs(first + second)[0], longest_since)


@pytest.mark.parametrize("max_recoveries", [1, 3])
@pytest.mark.parametrize("max_lr_reductions", [0, 1, 3])
def test_the_policy_lowers_the_rate_then_stops(max_recoveries: int, max_lr_reductions: int) -> None:
    """Short runs change nothing; each long run lowers the rate until ``max_lr_reductions``
    reductions were made, and the next one stops the fit."""
    for worst in range(max_recoveries):
        assert policy_action(worst, max_recoveries, 0, max_lr_reductions) == "continue"
    reductions, actions = 0, []
    while not actions or actions[-1] != "stop":
        action = policy_action(max_recoveries + 2, max_recoveries, reductions, max_lr_reductions)
        actions.append(action)
        reductions += action == "lower"
        assert len(actions) <= max_lr_reductions + 1
    assert actions == ["lower"] * max_lr_reductions + ["stop"]


def adam_after_steps(steps: int, lr: float = 0.1) -> tuple[list[torch.Tensor], torch.optim.Adam]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=generator, requires_grad=True), torch.randn(5)]
    params[1].requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.8, 0.9))
    for _ in range(steps):
        optimizer.zero_grad()
        sum((p**2).sum() for p in params).backward()  # type: ignore[union-attr]
        optimizer.step()
    return params, optimizer


def test_lowering_the_rate_multiplies_it_and_clears_the_state() -> None:
    _, optimizer = adam_after_steps(3)
    optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": 0.02})
    lower_learning_rate([optimizer], 0.5)
    assert [group["lr"] for group in optimizer.param_groups] == [0.05, 0.01]
    assert len(optimizer.state) == 0


def test_a_roll_back_leaves_the_state_of_a_zero_gradient_step() -> None:
    """After :meth:`LastGoodState.restore` everywhere, the parameters are the copy's and
    Adam's moments are those a real Adam step with a zero gradient leaves from the copy."""
    params, optimizer = adam_after_steps(3)
    good = LastGoodState()
    good.save(params, optimizer)
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    expected = torch.optim.Adam(reference, lr=0.1, betas=(0.8, 0.9))
    expected.load_state_dict(optimizer.state_dict())
    for p in reference:
        p.grad = torch.zeros_like(p)
    expected.step()  # the moments a zero gradient leaves (the parameters move: not compared)
    optimizer.zero_grad()
    sum((p**2).sum() * 100 for p in params).backward()  # type: ignore[union-attr]
    optimizer.step()  # the step that diverged
    good.restore(params, optimizer, lambda tensor: torch.tensor(True))
    for mine, copy, saved, theirs in zip(params, good.params, good.state, reference, strict=True):
        assert torch.equal(mine, copy)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(optimizer.state[mine][key], expected.state[theirs][key])
            assert not torch.equal(optimizer.state[mine][key], saved[key])  # decayed


def test_a_good_step_keeps_its_state_and_advances_the_copy() -> None:
    params, optimizer = adam_after_steps(2)
    good, before = LastGoodState(), LastGoodState()
    good.save(params, optimizer)
    before.save(params, optimizer)  # the state the next step starts from
    started = [p.detach().clone() for p in params]
    optimizer.zero_grad()
    sum((p**2).sum() for p in params).backward()  # type: ignore[union-attr]
    optimizer.step()
    after = [p.detach().clone() for p in params]
    fine = torch.tensor(False)
    good.advance(before, lambda tensor: fine)
    good.restore(params, optimizer, lambda tensor: fine)
    assert all(torch.equal(p, a) for p, a in zip(params, after, strict=True))
    # the state that produced the good output is the last good one now
    assert all(torch.equal(c, s) for c, s in zip(good.params, started, strict=True))


def test_the_copy_before_the_first_step_restores_a_fresh_optimizer() -> None:
    params, optimizer = adam_after_steps(0)
    initial = [p.detach().clone() for p in params]
    good = LastGoodState()
    good.save(params, optimizer)  # no state yet
    assert good.ready and good.state == [{}, {}]
    optimizer.zero_grad()
    sum((p**2).sum() for p in params).backward()  # type: ignore[union-attr]
    optimizer.step()
    good.restore(params, optimizer, lambda tensor: torch.tensor(True))
    for p, start in zip(params, initial, strict=True):
        assert torch.equal(p, start)
        assert not optimizer.state[p]["exp_avg"].any()
        assert not optimizer.state[p]["exp_avg_sq"].any()


def test_the_copy_survives_a_checkpoint_and_a_cleared_state() -> None:
    params, optimizer = adam_after_steps(2)
    good = LastGoodState()
    assert good.saved() is None
    good.save(params, optimizer)
    saved = good.saved()
    assert saved is not None
    loaded = LastGoodState()
    loaded.load(saved, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.params, good.params, strict=True))
    assert loaded.state[0].keys() == {"exp_avg", "exp_avg_sq"}
    loaded.forget_state()
    loaded.restore(params, optimizer, lambda tensor: torch.tensor(True))
    assert not optimizer.state[params[0]]["exp_avg"].any()
    good.reset()
    assert not good.ready and good.params == []
