import os
import sys
import tempfile
from pathlib import Path

# tests import their model builders as plain modules
sys.path.insert(0, str(Path(__file__).parent))

# `tune` and `compile` read and write the user's tuning logs under the cache folder: the tests
# use a fresh one, so that neither a developer's own logs nor the tests' leak across
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tvmbits-test-cache-")

# Tiers (`-m unit`, `-m kernel`, `-m e2e`), by file; a file may also set its own `pytestmark`.
# unit: no model compiled, no kernel run; kernel: single kernels against the integer
# reference; e2e (every other file): whole models compiled and run, the CLI, boards, examples.
TIERS = {
    "unit": ("test_encoding", "test_kernel_choice", "test_targets", "test_artifact", "test_tuning_log_location",
             "test_pass_annotate_layers", "test_pass_plan_layers", "test_pass_lower_lowbit",
             "test_pass_fold_flatten_transpose"),
    "kernel": ("test_bitpack", "test_bitserial_ops", "test_subbyte_ops", "test_bipolar_padding", "test_cpu_schedule"),
}


def pytest_collection_modifyitems(config, items):
    import pytest

    tier_of = {name: tier for tier, names in TIERS.items() for name in names}
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in ("unit", "kernel", "e2e")):
            item.add_marker(getattr(pytest.mark, tier_of.get(item.module.__name__, "e2e")))
