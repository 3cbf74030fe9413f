"""The coordinator, a member agent and a simulation worker start without the libraries that
only some jobs need: Opacus (record-level DP), dp-accounting (any DP) and torchmetrics (an
evaluation), each a second or more of SciPy and SymPy imports at every start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("opacus", "dp_accounting", "torchmetrics", "scipy.signal", "scipy.stats")


@pytest.mark.parametrize(
    "module", ["fedaas.server.run", "fedaas.client.agent", "fedaas.sim.simulate.members"]
)
def test_a_process_starts_without_the_libraries_only_some_jobs_need(module: str) -> None:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "torch" in loaded  # the check reads the real module list
    assert not [name for name in HEAVY if name in loaded]


def test_each_library_is_loaded_by_the_first_job_that_needs_it() -> None:
    code = (
        "import sys\n"
        "from fedaas.algorithms import accounting\n"
        "from fedaas.train import metrics\n"
        "assert 'dp_accounting' not in sys.modules and 'torchmetrics' not in sys.modules\n"
        "accounting.epsilon(1.0, 0.1, 10, 1e-5)\n"
        "metrics.compute_metrics({'loss': [1.0, 2.0], 'stats': [1, 0, 1, 0]}, 'binary', None,"
        " ('accuracy',))\n"
        "print('dp_accounting' in sys.modules, 'torchmetrics' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
