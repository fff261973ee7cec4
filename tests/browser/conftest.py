"""Browser tests of the pack's front end (web/rettention.js) in a real ComfyUI page, in a real Chromium.

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q -rs tests/browser

- ComfyUI runs as its own server process (tests/browser/comfy_server.py): 127.0.0.1, a free port,
  ``--cpu``, a temporary ``--base-directory`` whose custom_nodes/ holds symlinks to this repository
  and to the test-only nodes in tests/browser/test_nodes (a tiny random-weight Wan 2.1 and its
  conditioning), ``RETTENTION_TORCH_PATH=1`` so that the pack's PyTorch path computes the capture and
  sparse steps on the CPU (the Triton kernels need a GPU).
- Chromium is the system's (Debian: ``apt-get install chromium``), driven over CDP by the
  ``playwright`` package (``pip install playwright``; never ``playwright install``). Every request
  the page makes to anything but the ComfyUI server is aborted.
- Skipped, with the reason, when ``COMFYUI_PATH`` is unset or not a ComfyUI tree, when playwright is
  not installed or when no Chromium is found (``RETTENTION_CHROMIUM`` names one explicitly).
- ``RETTENTION_FRONTEND_SITE``: a folder put first on the server's sys.path that holds the front-end
  packages the ComfyUI tree pins, when the environment has other versions (one venv for both trees):
  ComfyUI 0.3.64 pins comfyui-frontend-package 1.27.10 and cannot start with 0.33.0's
  comfyui-workflow-templates, so
  ``pip install --no-deps --target DIR comfyui-frontend-package==1.27.10 comfyui-workflow-templates==0.1.95
  comfyui-embedded-docs==0.2.6``.
- Artifacts (screenshots, the server log, a screenshot of any failed test) go to
  ``RETTENTION_ARTIFACTS`` (default: a pytest temporary folder); with
  ``RETTENTION_WRITE_DOCS_SCREENSHOTS=1`` the two screenshots are also copied to docs/screenshots/.
"""
from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from comfy_server import REPO, ComfyServer, frontend_mismatches, installed_version

HERE = os.path.dirname(os.path.abspath(__file__))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
FRONTEND_SITE = os.environ.get("RETTENTION_FRONTEND_SITE") or None
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
PAGE_READY_TIMEOUT_MS = 90_000


def find_chromium() -> str | None:
    explicit = os.environ.get("RETTENTION_CHROMIUM")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _skip_reason() -> str | None:
    if not COMFYUI_PATH:
        return "COMFYUI_PATH is not set: the browser tests need a real ComfyUI source tree"
    if not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_patcher.py")):
        return f"COMFYUI_PATH={COMFYUI_PATH} is not a ComfyUI source tree"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright; the system Chromium is used)"
    if find_chromium() is None:
        return ("no Chromium found (apt-get install chromium, or RETTENTION_CHROMIUM=/path/to/chromium)"
                if not os.environ.get("RETTENTION_CHROMIUM") else
                f"RETTENTION_CHROMIUM={os.environ['RETTENTION_CHROMIUM']} is not an executable")
    if FRONTEND_SITE and not os.path.isdir(os.path.join(FRONTEND_SITE, "comfyui_frontend_package")):
        return f"RETTENTION_FRONTEND_SITE={FRONTEND_SITE} holds no comfyui_frontend_package"
    if installed_version("comfyui-frontend-package", FRONTEND_SITE) is None:
        return "comfyui-frontend-package is not installed (pip install -r $COMFYUI_PATH/requirements.txt)"
    mismatches = frontend_mismatches(COMFYUI_PATH, FRONTEND_SITE)
    if mismatches:
        return ("the front-end packages are not the ones this ComfyUI pins (" + "; ".join(mismatches) + "): "
                "install them with pip install --no-deps --target DIR ... and set RETTENTION_FRONTEND_SITE=DIR")
    return None


SKIP_REASON = _skip_reason()


def frontend_description() -> str:
    used = installed_version("comfyui-frontend-package", FRONTEND_SITE)
    return f"front end {used}" + (f" from {FRONTEND_SITE}" if FRONTEND_SITE else "")


def pytest_collection_modifyitems(config, items):
    if SKIP_REASON is None:
        return
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(marker)


def pytest_report_header(config):
    if SKIP_REASON:
        return f"Re-ttention browser tests: skipped ({SKIP_REASON})"
    return f"Re-ttention browser tests: ComfyUI at {COMFYUI_PATH}, {frontend_description()}, Chromium {find_chromium()}"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> str:
    folder = os.environ.get("RETTENTION_ARTIFACTS") or str(tmp_path_factory.mktemp("rettention_browser_artifacts"))
    os.makedirs(folder, exist_ok=True)
    return folder


# The server, the browser and the page last one test module (not the session): playwright's sync API
# keeps an asyncio loop running in this thread while it is started, and the integration tests that
# pytest runs after this folder boot ComfyUI with asyncio.run(), which refuses to run inside one.
@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory, artifacts):
    server = ComfyServer(COMFYUI_PATH, str(tmp_path_factory.mktemp("comfyui_server")), FRONTEND_SITE)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if os.path.isfile(server.log_path):
            shutil.copy(server.log_path, os.path.join(artifacts, "comfyui_server.log"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def comfy_page(browser, comfy_server):
    """One ComfyUI page for the module (loading it takes seconds); each test starts from an empty graph."""
    from browser_page import ComfyPage

    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = ComfyPage(context.new_page(), comfy_server)
        page.open(PAGE_READY_TIMEOUT_MS)
        yield page
    finally:
        context.close()


@pytest.fixture
def comfy(comfy_page, request, artifacts):
    """The session's page, on an empty graph, with the console messages of this test only."""
    comfy_page.start_test()
    yield comfy_page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        name = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
        try:
            comfy_page.page.screenshot(path=os.path.join(artifacts, f"failed_{name}.png"))
        except Exception:       # noqa: BLE001 - the screenshot only helps; the failure is reported anyway
            pass


@pytest.fixture(scope="session")
def docs_screenshots() -> str | None:
    if os.environ.get("RETTENTION_WRITE_DOCS_SCREENSHOTS") != "1":
        return None
    folder = os.path.join(REPO, "docs", "screenshots")
    os.makedirs(folder, exist_ok=True)
    return folder
