"""The pack's front end (web/rettention.js) in a real ComfyUI page in Chromium (see conftest.py).

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q -rs tests/browser
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from urllib.parse import urlencode

import pytest

from browser_page import EMPTY_WORKFLOW, REPORT_WIDGET, SCHEDULE_INPUTS, STRIP_WIDGET
from comfy_server import PACK_DIR_NAME, REPO

WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
PACK_TYPES = ("RettentionPatchModel", "RettentionSparsitySchedule", "RettentionCalibrateStats", "RettentionLoadStats")
SCHEDULE = "RettentionSparsitySchedule"
PATCH = "RettentionPatchModel"
ROUTE_INPUTS = SCHEDULE_INPUTS
MISSING_TEXT = ("missing", "not found", "errors found")     # what the front ends' dialogs and toasts say
RUN_STEPS = 8


# --- helpers ---------------------------------------------------------------------------------
def route_plan(server, values: dict, steps, density) -> tuple[int, dict]:
    query = {name: values[name] for name in ROUTE_INPUTS}
    query.update(steps=steps, density=density)
    query = {k: (("true" if v else "false") if isinstance(v, bool) else v) for k, v in query.items()}
    status, body = server.get("/rettention/plan?" + urlencode(query))
    return status, json.loads(body)


def widget_values(comfy, node) -> dict:
    return {name: comfy.widget_value(node, name) for name in ROUTE_INPUTS}


def assert_strip_matches_route(comfy, node, steps="20", density="0.0625"):
    """The strip of ``node`` shows, cell by cell, the plan a direct GET of the route gives for the node's
    widget values, ``steps`` and ``density``."""
    values = widget_values(comfy, node)
    fragments = [f"steps={steps}", f"density={density}"]
    strip = comfy.wait_strip(node, *fragments)
    status, plan = route_plan(comfy.server, values, steps, density)
    assert status == 200, plan
    assert strip["state"] == "ok", strip
    assert [c["mode"] for c in strip["cells"]] == plan["modes"]
    assert "".join(c["letter"] for c in strip["cells"]) == plan["summary"]
    assert [c["density"] for c in strip["cells"]] == plan["densities"]
    for cell, mode, dens in zip(strip["cells"], plan["modes"], plan["densities"]):
        assert mode in cell["title"] and (dens is None or "density" in cell["title"]), cell
    assert sum(grow for _, grow in strip["segments"]) == plan["steps"]
    expected = f"{plan['steps']} steps: {plan['full_cost_steps']} at full cost, {plan['sparse_steps']} sparse"
    assert strip["summary"].startswith(expected), (strip["summary"], expected)
    if plan.get("note"):
        assert plan["note"] in strip["summary"]
    assert strip["message"] is None
    return strip, plan


def assert_panel_layout(comfy, node, panel):
    """At ComfyUI's 100% zoom: the panel sits below every other widget of the node, inside the node,
    its element is shown where the widget is, its content fits without clipping, text >= 10 px."""
    comfy.focus(node)
    layout = comfy.layout(node, panel)
    assert layout["panel"] is not None, layout
    for other in layout["others"]:
        assert other["y"] + other["height"] <= layout["panel"]["y"] + 0.5, (other, layout["panel"])
    assert layout["panel"]["y"] + layout["panel"]["height"] <= layout["size"][1] + 0.5, layout
    assert layout["size"][0] >= layout["min"][0] and layout["size"][1] >= layout["min"][1], layout
    box, node_box = layout["box"], layout["nodeBox"]
    assert box and box["visible"] and box["height"] > 20, layout
    assert box["left"] >= node_box["left"] - 0.5 and box["right"] <= node_box["right"] + 0.5, layout
    assert box["top"] >= node_box["top"] - 0.5 and box["bottom"] <= node_box["bottom"] + 0.5, layout
    assert not layout["overflow"], layout["overflow"]
    assert layout["minFont"] >= 10, layout
    return layout


def missing_node_signs(comfy) -> list[str]:
    """What the page shows of a missing node: a dialog or toast that speaks of one (front end 1.27), a
    node drawn as broken (has_errors: its type is unknown; the red outline of 1.49)."""
    texts = comfy.page.evaluate("""() => [...document.querySelectorAll(
            '[role=dialog], [role=alertdialog], [role=alert], .p-dialog, .p-toast-message, .comfy-modal')]
        .filter((e) => e.getClientRects().length).map((e) => e.innerText)""")
    signs = [f"dialog: {t[:200]}" for t in texts if any(word in t.lower() for word in MISSING_TEXT)]
    signs += [f"broken node {n}" for n in comfy.eval(
        "return G().nodes.filter((n) => n.has_errors).map((n) => `${n.id} ${n.type}`);")]
    return signs


def dismiss_dialogs(comfy):
    comfy.page.keyboard.press("Escape")
    comfy.page.evaluate("""() => { for (const b of document.querySelectorAll(
        '.p-dialog-close-button, .p-toast-close-button, .p-dialog-header-close')) b.click(); }""")


def build_run_graph(comfy, steps=RUN_STEPS, with_schedule=True, seed=0):
    """Tiny Wan -> Patch Model (-> Sparsity Schedule) -> KSampler (euler, simple, cfg 3) -> Save Latent.
    Each test gives its own seed: ComfyUI would not run a prompt again whose result it has cached."""
    wan = comfy.add_node("RettentionTestTinyWan", (40, 40))
    cond = comfy.add_node("RettentionTestTinyWanConditioning", (40, 170))
    patch = comfy.add_node(PATCH, (420, 40))
    latent = comfy.add_node("EmptyHunyuanLatentVideo", (40, 330),
                            {"width": 128, "height": 128, "length": 9, "batch_size": 1})   # (1, 16, 3, 16, 16)
    sampler = comfy.add_node("KSampler", (800, 40), {"seed": seed, "control_after_generate": "fixed", "steps": steps,
                                                     "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
                                                     "denoise": 1.0})
    save = comfy.add_node("SaveLatent", (1180, 40))
    comfy.connect(wan, "MODEL", patch, "model")
    comfy.connect(patch, "MODEL", sampler, "model")
    comfy.connect(cond, "positive", sampler, "positive")
    comfy.connect(cond, "negative", sampler, "negative")
    comfy.connect(latent, "LATENT", sampler, "latent_image")
    comfy.connect(sampler, "LATENT", save, "samples")
    schedule = None
    if with_schedule:
        schedule = comfy.add_node(SCHEDULE, (420, 460))
        comfy.connect(schedule, "schedule", patch, "schedule")
    return {"patch": patch, "schedule": schedule, "sampler": sampler}


# --- the extension ---------------------------------------------------------------------------
def test_extension_is_served_and_registered(comfy):
    status, body = comfy.server.get("/extensions")
    assert status == 200
    url = f"/extensions/{PACK_DIR_NAME}/rettention.js"
    assert url in json.loads(body), "ComfyUI does not serve web/rettention.js (WEB_DIRECTORY in __init__.py?)"
    status, source = comfy.server.get(url)
    assert status == 200 and b"registerExtension" in source
    assert comfy.page.evaluate("""() => (app.extensions ?? []).some((e) => e.name === "rettention.ui")""")
    assert not comfy.pack_problems(), comfy.pack_problems()


def test_missing_node_detection_works(comfy):
    """The checks of the workflow test see a missing node type (a workflow with an unknown one)."""
    with open(os.path.join(REPO, "workflows", "rettention_flux_t2i.json")) as f:
        workflow = json.load(f)
    broken = json.loads(json.dumps(workflow))
    next(n for n in broken["nodes"] if n["type"] == SCHEDULE)["type"] = "RettentionNoSuchNode"
    found = comfy.load(broken)
    assert found["missing"] == ["RettentionNoSuchNode"] and found["unregistered"] == ["RettentionNoSuchNode"], found
    comfy.frames(5)
    signs = missing_node_signs(comfy)
    assert any("RettentionNoSuchNode" in sign for sign in signs), signs
    dismiss_dialogs(comfy)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_example_workflow_loads(comfy, path, artifacts):
    with open(path) as f:
        workflow = json.load(f)
    found = comfy.load(workflow)
    assert not [t for t in found["missing"] if t.startswith("Rettention")], found
    assert not found["missing"] and not found["unregistered"], found
    comfy.frames(5)
    assert not missing_node_signs(comfy), missing_node_signs(comfy)
    assert len(comfy.eval("return G().nodes.map((n) => n.id);")) == len(workflow["nodes"])
    pack_types = {n["type"] for n in workflow["nodes"] if n["type"].startswith("Rettention")}
    assert pack_types and pack_types <= set(PACK_TYPES)
    for node in comfy.nodes_of(SCHEDULE):
        assert_strip_matches_route(comfy, node)
        assert_panel_layout(comfy, node, STRIP_WIDGET)
    for node in comfy.nodes_of(PATCH):
        report = comfy.report(node)
        assert report["status"] == "none" and report["message"], report
        assert_panel_layout(comfy, node, REPORT_WIDGET)
    # the panels are neither sent with the prompt nor saved as widget values
    prompt = comfy.prompt()
    for node_id, entry in prompt.items():
        assert STRIP_WIDGET not in entry["inputs"] and REPORT_WIDGET not in entry["inputs"], entry
    saved = comfy.eval("return G().serialize();")
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for node in saved["nodes"]:
        if node["type"] in PACK_TYPES:
            assert node["widgets_values"] == by_id[node["id"]]["widgets_values"], node
    comfy.fit_all()
    comfy.page.screenshot(path=os.path.join(artifacts, "workflow_" + os.path.basename(path).replace(".json", ".png")))
    assert not comfy.pack_problems(), comfy.pack_problems()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_example_workflow_nodes_do_not_overlap(comfy, path):
    """As the front end lays the workflow out (it grows each node to its computed size: the pack's
    panels, a long title), no two nodes overlap: the panels are DOM elements drawn above the canvas,
    so a node under a panel would be hidden by it."""
    with open(path) as f:
        comfy.load(json.load(f))
    assert not comfy.overlaps(), comfy.overlaps()


# --- the schedule strip ----------------------------------------------------------------------
def test_schedule_strip_follows_widgets_and_step_count(comfy, artifacts):
    node = comfy.add_node(SCHEDULE, (100, 100))
    strip, plan = assert_strip_matches_route(comfy, node)
    assert plan["summary"] == "DDDDDCSSSSCSSSSCSSSS"           # the defaults at 20 steps
    assert strip["steps"] == "20" and strip["density"] == "0.0625"

    # a real click on capture_every's right arrow (5 -> 6), as a user changes it
    comfy.focus(node)
    box = comfy.widget_box(node, "capture_every")
    comfy.click_canvas(node, box["width"] - 24, box["y"] + 10)
    comfy.page.wait_for_timeout(100)
    assert comfy.widget_value(node, "capture_every") == 6
    strip, plan = assert_strip_matches_route(comfy, node)
    assert plan["summary"] == "DDDDDCSSSSSCSSSSSCSS"

    # widget edits as the front end applies them (value, then the widget's callback)
    comfy.set_widget(node, "start_percent", 0.1)
    comfy.set_widget(node, "density_steps", "0.5:0.03")
    comfy.set_widget(node, "end_percent", 0.9)
    strip, plan = assert_strip_matches_route(comfy, node)
    assert len({d for d in plan["densities"] if d is not None}) == 2        # 6.25% then 3%
    assert [label for label, _ in strip["segments"]].count("3%") == 1

    # the step count and the density typed on the strip (debounced)
    comfy.page.fill(".rettention-strip .rettention-steps", "33")
    comfy.page.fill(".rettention-strip .rettention-density", "0.125")
    strip, plan = assert_strip_matches_route(comfy, node, steps="33", density="0.125")
    assert len(strip["cells"]) == 33
    assert comfy.eval("return N(arg).properties.rettention_preview;", node) == {"steps": 33, "density": 0.125}

    # a value the route refuses: a short message in the strip, nothing else
    comfy.set_widget(node, "end_percent", 0.05)
    strip = comfy.wait_strip(node, "end_percent=0.05")
    status, body = route_plan(comfy.server, widget_values(comfy, node), "33", "0.125")
    assert status == 400 and body["error"]
    assert strip["state"] == "error" and not strip["cellsShown"] and strip["summary"] is None
    assert body["error"] in strip["message"] and len(strip["message"]) < 200, strip["message"]
    comfy.set_widget(node, "end_percent", 1.0)
    assert_strip_matches_route(comfy, node, steps="33", density="0.125")
    assert_panel_layout(comfy, node, STRIP_WIDGET)
    comfy.screenshot_node(node, os.path.join(artifacts, "schedule_strip_33_steps.png"))
    assert not comfy.pack_problems(), comfy.pack_problems()


def test_a_copied_schedule_node_has_its_own_strip(comfy):
    node = comfy.add_node(SCHEDULE, (100, 100), {"capture_every": 4})
    comfy.wait_strip(node)
    copy = comfy.eval("""const n = N(arg), c = n.clone(); c.pos = [n.pos[0] + 420, n.pos[1]]; G().add(c);
        G().setDirtyCanvas(true, true); return c.id;""", node)
    assert copy != node
    strip, plan = assert_strip_matches_route(comfy, copy)
    assert comfy.widget_value(copy, "capture_every") == 4
    comfy.set_widget(copy, "capture_every", 7)
    assert_strip_matches_route(comfy, copy)
    strip, _ = assert_strip_matches_route(comfy, node)         # the original keeps its own values
    assert comfy.widget_value(node, "capture_every") == 4
    assert comfy.eval("return N(arg.a).__rettention.element !== N(arg.b).__rettention.element;", {"a": node, "b": copy})
    comfy.eval("G().remove(N(arg));", copy)
    comfy.set_widget(node, "capture_every", 3)
    assert_strip_matches_route(comfy, node)
    assert not comfy.pack_problems(), comfy.pack_problems()


def test_canvas_zoom_works_over_the_strip(comfy):
    """The mouse wheel over the strip zooms the canvas as it does elsewhere (once), not over its inputs."""
    node = comfy.add_node(SCHEDULE, (100, 100))
    comfy.wait_strip(node)

    def zoom_at(point):
        comfy.focus(node)
        comfy.page.mouse.move(*point)
        before = comfy.eval("return app.canvas.ds.scale;")
        comfy.page.mouse.wheel(0, -100)
        comfy.frames()
        return comfy.eval("return app.canvas.ds.scale;") / before

    comfy.focus(node)
    cells = comfy.eval("""const r = N(arg).__rettention.element.querySelector(".rettention-cells").getBoundingClientRect();
        return [r.left + r.width / 2, r.top + r.height / 2];""", node)
    steps = comfy.eval("""const r = N(arg).__rettention.element.querySelector(".rettention-steps").getBoundingClientRect();
        return [r.left + 8, r.top + r.height / 2];""", node)
    empty = (1200, 800)
    assert zoom_at(empty) > 1.01
    assert zoom_at(cells) == pytest.approx(zoom_at(empty))
    assert zoom_at(steps) == 1.0 and comfy.strip(node)["steps"] == "20"
    assert not comfy.pack_problems(), comfy.pack_problems()


def test_strip_steps_and_density_are_saved_with_the_workflow(comfy):
    node = comfy.add_node(SCHEDULE, (100, 100), {"capture_every": 3})
    comfy.wait_strip(node)
    comfy.page.fill(".rettention-strip .rettention-steps", "12")
    assert_strip_matches_route(comfy, node, steps="12")
    saved = comfy.eval("return G().serialize();")
    comfy.start_test()
    comfy.load(saved)
    [node] = comfy.nodes_of(SCHEDULE)
    strip, plan = assert_strip_matches_route(comfy, node, steps="12")
    assert comfy.widget_value(node, "capture_every") == 3 and len(plan["modes"]) == 12
    assert not comfy.pack_problems(), comfy.pack_problems()


# --- the run report --------------------------------------------------------------------------
def test_patch_model_report_after_a_run(comfy, artifacts, docs_screenshots):
    ids = build_run_graph(comfy)
    comfy.page.fill(".rettention-strip .rettention-steps", str(RUN_STEPS))
    strip, plan = assert_strip_matches_route(comfy, ids["schedule"], steps=str(RUN_STEPS))
    before = comfy.report_count(ids["patch"])
    comfy.queue()
    report = comfy.wait_report(ids["patch"], before)
    data = report["report"]
    assert report["status"] == "finished" and report["badge"] == "finished", report
    assert data["calls"]["capture"] > 0 and data["calls"]["sparse"] > 0, data
    assert data["family"] == "wan"
    # the strip previewed the plan this run had (plain KSampler, simple scheduler)
    assert data["plan"] == plan["summary"], (data["plan"], plan["summary"])
    assert report["values"]["plan"] == data["plan"] and len(report["cells"]) == RUN_STEPS
    assert f"{data['calls']['capture']} capture" in report["values"]["calls"]
    assert f"{data['calls']['sparse']} sparse" in report["values"]["calls"]
    if isinstance(data.get("density"), (int, float)):
        assert report["values"]["density"].endswith("%")
    assert "MB" in report["values"]["stats"] or report["values"]["stats"] == "—"
    assert report["values"]["dense_reasons"]
    assert_panel_layout(comfy, ids["patch"], REPORT_WIDGET)
    assert_panel_layout(comfy, ids["schedule"], STRIP_WIDGET)
    shots = {"schedule_strip.png": ids["schedule"], "patch_report.png": ids["patch"]}
    for name, node in shots.items():
        path = os.path.join(artifacts, name)
        comfy.screenshot_node(node, path)
        assert os.path.getsize(path) > 5000
        if docs_screenshots:
            shutil.copy(path, os.path.join(docs_screenshots, name))
    assert not comfy.pack_problems(), comfy.pack_problems()


def test_patch_model_report_of_a_cancelled_run(comfy):
    ids = build_run_graph(comfy, steps=400, with_schedule=False, seed=2)
    comfy.page.evaluate("""() => { window.__rettentionTest.progress = 0;
        window.comfyAPI.api.api.addEventListener("progress", (e) => { window.__rettentionTest.progress = e.detail?.value ?? 0; }); }""")
    before = comfy.report_count(ids["patch"])
    comfy.queue()
    comfy.page.wait_for_function("() => window.__rettentionTest.progress >= 2", timeout=240_000, polling=100)
    comfy.page.evaluate("async () => { await window.comfyAPI.api.api.interrupt(); }")
    report = comfy.wait_report(ids["patch"], before, timeout_ms=120_000)
    assert report["status"] == "cancelled", report
    assert report["badge"] == f"cancelled at step {report['report']['steps_run']} of 400", report
    assert report["report"]["steps_run"] < 400
    assert not comfy.pack_problems(), comfy.pack_problems()


def test_report_messages_reach_only_their_node(comfy, artifacts):
    first = comfy.add_node(PATCH, (100, 100))
    second = comfy.add_node(PATCH, (500, 100))
    failed = {"status": "failed", "family": "flux", "plan": "DDCSSSSCSSD", "steps_run": 4,
              "calls": {"capture": 19, "sparse": 38, "dense": 57, "passthrough": 0}, "density": 0.0712,
              "stats_peak_mb": 1536.25, "stats_device": "cuda:0", "saved_seconds": 0.42,
              "dense_reasons": ["a capture failed (OutOfMemoryError: CUDA out of memory); layer 3 stays dense",
                                "the first and last layers are dense (dense_first_last)"]}
    comfy.dispatch_report(str(first), failed)
    report = comfy.wait_report(first, 0)
    assert report["status"] == "failed" and report["badge"] == "failed at step 4 of 11"
    assert report["values"]["calls"] == "19 capture · 38 sparse · 57 dense · 0 passthrough"
    assert report["values"]["density"] == "7.12%"
    assert report["values"]["stats"] == "1536 MB on cuda:0"
    assert report["values"]["saved"] == "0.42 s"
    assert "OutOfMemoryError" in report["values"]["dense_reasons"]
    assert report["cells"] == ["dense", "dense", "capture"] + ["sparse"] * 4 + ["capture", "sparse", "sparse", "dense"]
    assert comfy.report(second)["status"] == "none"
    comfy.dispatch_report("9999", dict(failed, status="finished"))
    comfy.dispatch_report(str(second), None)                 # malformed: ignored
    comfy.dispatch_report(str(second), {"status": "cancelled", "plan": None, "calls": None, "density": None,
                                        "stats_peak_mb": None, "stats_device": None, "saved_seconds": None,
                                        "dense_reasons": None})
    report = comfy.wait_report(second, 0)
    assert report["status"] == "cancelled" and report["values"]["density"] == "—"
    assert report["values"]["saved"] == "not measured"
    assert comfy.report(first)["status"] == "failed"
    comfy.focus(first)
    assert_panel_layout(comfy, first, REPORT_WIDGET)
    comfy.screenshot_node(first, os.path.join(artifacts, "patch_report_failed.png"))
    assert not comfy.pack_problems(), comfy.pack_problems()


# --- robustness ------------------------------------------------------------------------------
def test_a_failing_extension_hook_leaves_the_graph_working(comfy):
    """With the panels' DOM widgets made to throw, a workflow still loads whole, its prompt is still made
    and a graph still runs; the pack says so with one console warning per failure."""
    with open(os.path.join(REPO, "workflows", "rettention_flux_t2i.json")) as f:
        workflow = json.load(f)
    inject = """for (const type of ["RettentionSparsitySchedule", "RettentionPatchModel"])
        LiteGraph.registered_node_types[type].prototype.addDOMWidget = function () { throw new Error(`injected into ${type}`); };"""
    restore = """for (const type of ["RettentionSparsitySchedule", "RettentionPatchModel"])
        delete LiteGraph.registered_node_types[type].prototype.addDOMWidget;"""
    comfy.eval(inject)
    try:
        found = comfy.load(workflow)
        assert not found["missing"] and not found["unregistered"]
        assert len(comfy.eval("return G().nodes.map((n) => n.id);")) == len(workflow["nodes"])
        [schedule] = comfy.nodes_of(SCHEDULE)
        [patch] = comfy.nodes_of(PATCH)
        assert comfy.strip(schedule) is None and comfy.report(patch) is None
        prompt = comfy.prompt()
        assert prompt[str(schedule)]["class_type"] == SCHEDULE
        assert prompt[str(schedule)]["inputs"]["capture_every"] == 5
        assert prompt[str(patch)]["inputs"]["schedule"] == [str(schedule), 0]
        comfy.frames(3)
        warnings = [t for k, t in comfy.messages() if k == "warning" and "[Re-ttention]" in t]
        assert len(warnings) == 2, warnings
        assert not [t for k, t in comfy.messages() if k in ("error", "pageerror") and "rettention" in t.lower()]

        comfy.load(EMPTY_WORKFLOW)
        build_run_graph(comfy, seed=3)
        comfy.page.evaluate("""() => { window.__rettentionTest.done = null;
            const api = window.comfyAPI.api.api;
            api.addEventListener("execution_success", () => { window.__rettentionTest.done = "success"; });
            api.addEventListener("execution_error", () => { window.__rettentionTest.done = "error"; }); }""")
        comfy.queue()
        comfy.page.wait_for_function("() => window.__rettentionTest.done", timeout=240_000, polling=200)
        assert comfy.page.evaluate("() => window.__rettentionTest.done") == "success"
    finally:
        comfy.eval(restore)
    comfy.start_test()
    node = comfy.add_node(SCHEDULE, (100, 100))
    assert_strip_matches_route(comfy, node)


def test_graphs_without_the_pack_get_nothing(comfy):
    comfy.add_node("KSampler", (100, 100))
    comfy.add_node("EmptyLatentImage", (500, 100))
    comfy.frames()
    assert comfy.page.evaluate("() => document.querySelectorAll('.rettention-strip, .rettention-report').length") == 0
    assert not comfy.pack_problems(), comfy.pack_problems()
