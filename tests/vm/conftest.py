"""tests/vm boots only the suites asked for (``BULWARK_KLAB_SUITES``; unset: bookworm, as CI does;
``make test-kernels`` asks for all): the others are deselected, with a printed line, never skipped."""
from __future__ import annotations

import pytest

from tests.vm.lab import suites_wanted


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = set(suites_wanted())
    keep, drop = [], []
    for item in items:
        suite = item.callspec.params.get("suite") if hasattr(item, "callspec") else None
        (drop if item.get_closest_marker("vm") and suite is not None and suite not in wanted
         else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"kernel lab: booting {sorted(wanted) or 'no guest'} "
                                "(BULWARK_KLAB_SUITES=all, none or a comma list; make test-kernels boots all)")
