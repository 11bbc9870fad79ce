"""pytest fixtures for the end-to-end tests: start gateways on either host (Envoy, or Kong's engine:
nginx + ngx_wasm_module), dump the gateway's log when a test fails, and always stop what was started.

Every test that uses a gateway runs once per host ("envoy", "envoy-native", "kong": test ids end
in [envoy] / [envoy-native] / [kong]); a test that states behaviour of one host only says so with a
marker. "envoy-native" is the same Envoy with the native module (libgatewarden.so) in place of the
.wasm modules: a test for "envoy" runs on it too, unless it is about Wasm itself:

    @pytest.mark.hosts("envoy")             # ECDS, admin API, Envoy's headers: Envoy (Wasm and native)
    def test_something(start_gateway):
        gw = start_gateway({"ip_geo": policy}, geo_files={"country.mmdb": harness.GEO_DB})
        assert gw.get("/", source="127.0.0.9").status == 200

    @pytest.fixture(scope="module")
    def gw(start_module_gateway):          # one gateway for all tests of a module (per host)
        return start_module_gateway({"ip_geo": policy})

    @pytest.mark.wasm_only("a .wasm module swap")   # not on envoy-native (say why)
    @pytest.mark.native_defect("remote JWKS")       # envoy-native: a strict xfail (the cause)

Hosts: `--host envoy` / `--host envoy-native` / `--host kong` (repeatable) selects; default all. Without Kong's engine
(../shared/wasmx/bin/nginx or $GATEWARDEN_WASMX) the Kong cases skip with the reason printed. Under
CI=true nothing may skip: a missing engine or an unusable [::1] fails the run at the start, and a
test that skips anyway is reported as failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import BaseGateway  # noqa: E402
from services import RedisServer, redis_missing  # noqa: E402

GATEWAYS = pytest.StashKey[list]()
REPORT = pytest.StashKey[list]()
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--host", action="append", choices=harness.HOSTS, dest="hosts",
                     help="run the cases of this host only (repeatable; default: every host)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hosts(*names): the hosts this test runs on (default: all)")
    config.addinivalue_line("markers", "kong_defect(reason): the Kong run is a strict xfail: the behaviour is "
                            "required but the Kong host does not give it yet (reason: the cause); an XPASS "
                            "fails the run, so the mark goes once fixed")
    config.addinivalue_line("markers", "wasm_only(reason): the test is about Wasm itself (a .wasm module, the VM, "
                            "a Wasm-only filter) or has no Gatewarden filter: it does not run on envoy-native, "
                            "which otherwise runs every case of envoy")
    config.addinivalue_line("markers", "native_defect(reason): the envoy-native run is a strict xfail: required, but "
                            "the native module does not give it yet (reason: what is missing); an XPASS fails "
                            "the run, so the mark goes once fixed")


def selected_hosts(config: pytest.Config) -> tuple[str, ...]:
    return tuple(config.getoption("hosts") or harness.HOSTS)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI, what would make cases skip fails the run before any test."""
    if not CI:
        return
    problems = [why for host in selected_hosts(session.config) if (why := harness.engine_missing(host))]
    if not harness.ipv6_loopback_usable():
        problems.append("IPv6 loopback [::1] is unusable: the IPv6 cases cannot run")
    if problems:
        pytest.exit("CI=true and: " + "; ".join(problems), returncode=1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("hosts")
    allowed = set(harness.HOSTS if marker is None else marker.args)
    if "envoy" in allowed:  # Envoy with the native module: every case of Envoy with Wasm
        allowed.add("envoy-native")
    if metafunc.definition.get_closest_marker("wasm_only") is not None:
        allowed.discard("envoy-native")
    hosts = [h for h in selected_hosts(metafunc.config) if h in allowed]
    # Module scope: tests sharing a module-scoped gateway run host by host. A test for none of the
    # selected hosts is deselected (not skipped).
    metafunc.parametrize("host", hosts or [NO_HOST], indirect=True, scope="module")


NO_HOST = "none-selected"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        host_param = callspec.params.get("host") if callspec is not None else None
        (drop if host_param == NO_HOST else keep).append(item)
        defect = item.get_closest_marker("kong_defect")
        if defect is not None and host_param == "kong":
            item.add_marker(pytest.mark.xfail(strict=True, reason="Kong: " + defect.args[0]))
        defect = item.get_closest_marker("native_defect")
        if defect is not None and host_param == "envoy-native":
            item.add_marker(pytest.mark.xfail(strict=True, reason="envoy-native: " + defect.args[0]))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="module")
def host(request: pytest.FixtureRequest) -> str:
    """The host the test runs on: "envoy", "envoy-native" or "kong" (parametrized by pytest_generate_tests)."""
    name: str = request.param
    why = harness.engine_missing(name)
    if why:
        if CI:
            pytest.fail(f"{name} cases cannot run: {why}")
        pytest.skip(f"{name} cases skipped: {why}")
    return name


def require_module(filter_name: str, host: str = "envoy") -> Path:
    """The filter's release module on `host`, or skip the test when it has not been built (a failure
    under CI)."""
    path = harness.GATEWAYS[host].default_module(filter_name)
    if not path.exists():
        pytest.skip(f"{path.name} not built (scripts/build.sh)")
    return path


def require_ipv6(gw: BaseGateway) -> None:
    """Skip an IPv6 case when [::1] is unusable (under CI the run has failed at the start already)."""
    if not gw.ipv6:
        pytest.skip("IPv6 loopback ([::1]) unusable on this machine")


def _factory(node: pytest.Item | pytest.Collector, tmp_dir: Path, host: str
             ) -> tuple[Callable[..., BaseGateway], list[BaseGateway]]:
    started: list[BaseGateway] = []
    node.stash.setdefault(GATEWAYS, []).append(started)

    def start(filters: dict[str, Any] | None = None, **kwargs: Any) -> BaseGateway:
        """Start a gateway of this host (see harness.BaseGateway and the host's class for kwargs);
        stopped when the fixture's scope ends."""
        if kwargs.get("check_modules", True):
            for name in filters or {}:
                if name not in kwargs.get("modules", {}):
                    require_module(name, host)
        gw = harness.GATEWAYS[host](tmp_dir / f"{host}-{len(started)}", filters, **kwargs)
        started.append(gw)
        gw.start()
        return gw

    return start, started


def _stop_all(started: list[BaseGateway]) -> None:
    for gw in started:
        gw.stop()


@pytest.fixture
def start_gateway(request: pytest.FixtureRequest, tmp_path: Path, host: str):
    """Factory: start_gateway(filters, **kwargs) -> a gateway of `host`, stopped after the test."""
    start, started = _factory(request.node, tmp_path, host)
    try:
        yield start
    finally:  # also on KeyboardInterrupt; atexit and PDEATHSIG cover harder exits
        _stop_all(started)


@pytest.fixture(scope="module")
def start_module_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, host: str):
    """Factory like start_gateway, but the gateways live until the test module ends (per host)."""
    start, started = _factory(request.node, tmp_path_factory.mktemp(f"module-gateways-{host}"), host)
    try:
        yield start
    finally:
        _stop_all(started)


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """report(line): a measurement printed in the run's summary (e.g. the stall of a reload)."""
    lines = request.config.stash.setdefault(REPORT, [])
    return lines.append


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(REPORT, [])
    if lines:
        terminalreporter.section("gatewarden e2e measurements")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def redis(tmp_path: Path):
    """A throwaway Debian redis-server on a free loopback port (the fleet rate-limit tests' counters)."""
    why = redis_missing()
    if why:
        pytest.skip(why)  # under CI=true a skip is reported as a failure
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="session")
def mmdb(tmp_path_factory: pytest.TempPathFactory):
    """make(name, "NET=CC", ..., layout=None, corrupt=False) -> Path of a test MMDB, written by the
    testkit's make-test-mmdb (built once; cargo reuses the workspace's test build)."""
    build = subprocess.run(
        ["cargo", "build", "-q", "-p", "gatewarden-testkit", "--bin", "make-test-mmdb", "--message-format=json"],
        cwd=harness.ROOT, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"building make-test-mmdb failed:\n{build.stderr}"
    exe = None
    for line in build.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "make-test-mmdb":
            exe = msg.get("executable") or exe
    assert exe, "cargo did not report the make-test-mmdb executable"
    out_dir = tmp_path_factory.mktemp("mmdb")

    def make(name: str, *entries: str, layout: str | None = None, corrupt: bool = False) -> Path:
        path = out_dir / f"{name}.mmdb"
        cmd = [exe, str(path), *(["--layout", layout] if layout else []), *(["--corrupt"] if corrupt else []), *entries]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        return path

    return make


@pytest.fixture(scope="session")
def geo_db() -> Path:
    """The country MMDB from the npm package (scripts/setup.sh installs it)."""
    if not harness.GEO_DB.exists():
        pytest.fail(f"{harness.GEO_DB} missing (scripts/setup.sh)")
    return harness.GEO_DB


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On failure, attach the tail of every involved gateway's log to the report. Under CI, a
    skip is a failure (no case may silently not run)."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {report.longrepr}"
    if not report.failed:
        return
    for node in item.listchain():
        for started in node.stash.get(GATEWAYS, []):
            for gw in started:
                report.sections.append((f"{gw.host} log ({gw.log_path}, {gw.state}), last 200 lines",
                                        gw.log_tail(200)))
