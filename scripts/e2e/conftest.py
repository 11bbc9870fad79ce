"""pytest fixtures for the end-to-end tests: start Gateways (Envoy + echo upstream + geo-DB server),
dump Envoy's log when a test fails, and always stop what was started.

    def test_something(start_gateway):
        gw = start_gateway({"ip_geo": policy}, geo_files={"country.mmdb": harness.GEO_DB})
        assert gw.get("/", source="127.0.0.9").status == 200

    @pytest.fixture(scope="module")
    def gw(start_module_gateway):          # one Envoy for all tests of a module
        return start_module_gateway({"ip_geo": policy})
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import Gateway  # noqa: E402

GATEWAYS = pytest.StashKey[list]()


def require_module(filter_name: str) -> Path:
    """The filter's release module, or skip the test when it has not been built."""
    path = harness.module_path(filter_name)
    if not path.exists():
        pytest.skip(f"{path.name} not built (scripts/build.sh)")
    return path


def _factory(node: pytest.Item | pytest.Collector, tmp_dir: Path) -> tuple[Callable[..., Gateway], list[Gateway]]:
    started: list[Gateway] = []
    node.stash.setdefault(GATEWAYS, []).append(started)

    def start(filters: dict[str, Any] | None = None, **kwargs: Any) -> Gateway:
        """Start a Gateway (see harness.Gateway for kwargs); stopped when the fixture's scope ends."""
        if not harness.ENVOY_BIN.exists():
            pytest.skip(f"{harness.ENVOY_BIN} missing (scripts/setup.sh)")
        if kwargs.get("check_modules", True):
            for name in filters or {}:
                if name not in kwargs.get("modules", {}):
                    require_module(name)
        gw = Gateway(tmp_dir / f"gateway-{len(started)}", filters, **kwargs)
        started.append(gw)
        gw.start()
        return gw

    return start, started


def _stop_all(started: list[Gateway]) -> None:
    for gw in started:
        gw.stop()


@pytest.fixture
def start_gateway(request: pytest.FixtureRequest, tmp_path: Path):
    """Factory: start_gateway(filters, **Gateway kwargs) -> Gateway, stopped after the test."""
    start, started = _factory(request.node, tmp_path)
    try:
        yield start
    finally:  # also on KeyboardInterrupt; atexit and PDEATHSIG cover harder exits
        _stop_all(started)


@pytest.fixture(scope="module")
def start_module_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Factory like start_gateway, but the Gateways live until the test module ends."""
    start, started = _factory(request.node, tmp_path_factory.mktemp("module-gateways"))
    try:
        yield start
    finally:
        _stop_all(started)


@pytest.fixture(scope="session")
def geo_db() -> Path:
    """The country MMDB from the npm package (scripts/setup.sh installs it)."""
    if not harness.GEO_DB.exists():
        pytest.skip(f"{harness.GEO_DB} missing (scripts/setup.sh)")
    return harness.GEO_DB


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On failure, attach the tail of every involved Envoy's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for node in item.listchain():
        for started in node.stash.get(GATEWAYS, []):
            for gw in started:
                state = "running" if gw.running else f"exited {gw.proc.returncode if gw.proc else '-'}"
                report.sections.append((f"envoy log ({gw.workdir}, {state}), last 200 lines",
                                        gw.log_tail(200)))
