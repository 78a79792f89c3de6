"""Where torch.compile fails on the first step, the run goes on in eager mode from the state it
had before that step: the step is applied once, not once per attempt."""

from __future__ import annotations

import torch
from torch import nn

from qatbench.runner.train import _first_compiled_update


class CompilerFailed(Exception):
    """Stands in for torch._dynamo's BackendCompilerFailed (the fallback goes by the module)."""


CompilerFailed.__module__ = "torch._dynamo.exc"


class FailsOnceAfterAForward:
    """A method whose first update runs a training forward (moving BN statistics), then fails the
    way a compiled second pass would."""

    def __init__(self):
        self.model = nn.BatchNorm1d(3)
        self.model._compiled_call_impl = self.model._call_impl  # what nn.Module.compile sets, uncompiled
        self.calls = 0

    def update(self, minibatches):
        self.calls += 1
        self.model(minibatches[0][0])
        if self.calls == 1:
            raise CompilerFailed("no C++ compiler")
        return {"loss": 1.0}


def test_compile_failure_falls_back_to_eager_and_applies_the_step_once():
    torch.manual_seed(0)
    x = torch.randn(8, 3) * 3 + 2
    method = FailsOnceAfterAForward()
    losses, compiled = _first_compiled_update(method, [(x, torch.zeros(8))])
    assert (losses, compiled, method.calls) == ({"loss": 1.0}, False, 2)
    assert method.model._compiled_call_impl is None
    once = nn.BatchNorm1d(3)
    once(x)
    assert int(method.model.num_batches_tracked) == 1
    torch.testing.assert_close(method.model.running_mean, once.running_mean)
    torch.testing.assert_close(method.model.running_var, once.running_var)


def test_other_errors_of_the_first_step_are_not_swallowed():
    class Broken(FailsOnceAfterAForward):
        def update(self, minibatches):
            raise ValueError("a bug in the method")

    try:
        _first_compiled_update(Broken(), [(torch.randn(4, 3), torch.zeros(4))])
    except ValueError as exc:
        assert str(exc) == "a bug in the method"
    else:
        raise AssertionError("the method's own error was swallowed")


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.second(self.first(x)).mean()


def test_a_run_compiled_after_another_in_one_process_runs_its_own_hooks():
    """A sweep's second run (fpq's capture hooks) must not reuse the first run's compiled graph,
    which dynamo would serve without its hooks; the backend is dynamo's eager one, to stay quick."""
    from qatbench.runner.compiled import compile_in_place

    x = torch.randn(2, 3, 8, 8)
    earlier = TwoConvs()
    compile_in_place(earlier, backend="eager")
    earlier(x)
    later, seen = TwoConvs(), []
    later.first.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    compile_in_place(later, backend="eager")
    later(x)
    assert seen == [torch.Size([2, 4, 6, 6])]
