"""torch.compile of one run's model, with none of an earlier run's compiled code.

A sweep trains its runs one after another in one process. Dynamo caches compiled code by the
module's forward code and, by default, does not guard on nn.Module hooks
(`torch._dynamo.config.skip_nnmodule_hook_guards`). So a run's model, of the same class as an
earlier run's, reuses the graph traced for that earlier model and silently skips the hooks its
own method registered. Seen 2026-12-04 (torch 2.14): fpq after fqat in one `qatbench run` failed
at its first step, because its CSD capture hooks never fired. Resetting dynamo before each compile
costs nothing a new model would not recompile anyway; the reset is process-wide, so a caller's own
compiled functions in the same process (a notebook calling qatbench.run) compile again too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def compile_in_place(model: nn.Module, **options: Any) -> None:
    """`model.compile(**options)` after dropping every graph compiled before in this process."""
    torch._dynamo.reset()
    model.compile(**options)
