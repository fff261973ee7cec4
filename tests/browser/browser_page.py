"""The ComfyUI page the browser tests drive (playwright's sync API), and what they read from it.

Everything in the page is reached the way an extension reaches it: ``window.app`` (ComfyUI's app),
``window.LiteGraph``, the DOM elements of the pack's panels (web/rettention.js: ``.rettention-strip``
on Sparsity Schedule nodes, ``.rettention-report`` on Patch Model nodes) and their data attributes.
"""
from __future__ import annotations

import json
import time
from urllib.parse import urlparse

STRIP_WIDGET = "rettention_plan_strip"
REPORT_WIDGET = "rettention_run_report"
SCHEDULE_INPUTS = ("start_percent", "end_percent", "capture_every", "density_steps", "weight", "ramp")
EMPTY_WORKFLOW = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {},
                  "extra": {}, "version": 0.4}
# the options both front ends take (1.27: showMissingModelsDialog; 1.49: skipAssetScans, silentAssetErrors):
# the example workflows name model files that are not here, which is not what these tests look at
LOAD_OPTIONS = {"showMissingNodesDialog": True, "showMissingModelsDialog": False, "skipAssetScans": True,
                "silentAssetErrors": True}

JS_PRELUDE = """
const G = () => app.canvas?.graph ?? app.rootGraph ?? app.graph;
const N = (id) => { const n = G().getNodeById(id); if (!n) throw new Error(`no node ${id}`); return n; };
const W = (n, name) => { const w = (n.widgets ?? []).find((w) => w.name === name); if (!w) throw new Error(`no widget ${name} on ${n.type}`); return w; };
"""


def js(body: str, is_async: bool = True) -> str:
    """A page function ``(arg) => {...}`` with the helpers G (the graph shown), N (node by id), W (widget by name)."""
    return f"{'async ' if is_async else ''}(arg) => {{ {JS_PRELUDE}\n{body}\n}}"


class ComfyPage:
    def __init__(self, page, server):
        self.page = page
        self.server = server
        self.console: list[tuple[str, str]] = []
        self.mark = 0
        self.blocked: list[str] = []
        host = urlparse(server.url).netloc
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))

        def route(r):      # the page reaches nothing but this ComfyUI
            if urlparse(r.request.url).netloc == host or r.request.url.startswith(("data:", "blob:")):
                r.continue_()
            else:
                self.blocked.append(r.request.url)
                r.abort()
        page.route("**/*", route)

    # --- the page ----------------------------------------------------------------------------
    def open(self, timeout_ms: int) -> None:
        self.page.goto(self.server.url, wait_until="load", timeout=timeout_ms)
        self.page.wait_for_function(
            """() => window.app && window.LiteGraph && (app.rootGraph ?? app.graph) && app.canvas
                     && LiteGraph.registered_node_types.RettentionSparsitySchedule""", timeout=timeout_ms)
        # the probe that records what the front end found missing when a graph loads (both front ends
        # pass the list to the extensions' afterConfigureGraph)
        self.page.evaluate("""() => { window.__rettentionTest = {missing: null};
            app.registerExtension({name: "rettention.test.probe",
                afterConfigureGraph(missing) { window.__rettentionTest.missing = missing ?? []; }}); }""")

    def start_test(self) -> None:
        self.mark = len(self.console)
        self.load(EMPTY_WORKFLOW)

    def messages(self) -> list[tuple[str, str]]:
        return self.console[self.mark:]

    def pack_problems(self) -> list[tuple[str, str]]:
        """Console errors of this test that mention the pack, and the pack's own warnings."""
        problems = []
        for kind, text in self.messages():
            lowered = text.lower()
            if kind in ("error", "pageerror") and ("rettention" in lowered or "re-ttention" in lowered):
                problems.append((kind, text))
            elif kind == "warning" and "[re-ttention]" in lowered:
                problems.append((kind, text))
        return problems

    def eval(self, body: str, arg=None):
        return self.page.evaluate(js(body), arg)

    def wait(self, body: str, arg=None, timeout_ms: int = 15_000):
        """Wait until the page function (G, N, W available) returns something truthy; return it."""
        handle = self.page.wait_for_function(js(body, is_async=False), arg=arg, timeout=timeout_ms, polling=100)
        return handle.json_value()

    # --- graphs ------------------------------------------------------------------------------
    def load(self, workflow: dict) -> dict:
        """Load a workflow as the front end loads a file; returns what it found missing and which node
        types of the workflow the front end does not know."""
        return self.page.evaluate("""async ([wf, options]) => {
            window.__rettentionTest.missing = null;
            await app.loadGraphData(wf, true, true, null, options);
            await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
            const types = [...new Set((wf.nodes ?? []).map((n) => n.type))];
            return {missing: (window.__rettentionTest.missing ?? []).map((m) => typeof m === "string" ? m : m.type),
                    unregistered: types.filter((t) => !(t in LiteGraph.registered_node_types))};
        }""", [workflow, LOAD_OPTIONS])

    def add_node(self, type_: str, pos, widgets: dict | None = None) -> int:
        return self.eval("""const n = LiteGraph.createNode(arg.type);
            if (!n) throw new Error(`cannot create ${arg.type}`);
            n.pos = arg.pos; G().add(n);
            for (const [name, value] of Object.entries(arg.widgets)) { const w = W(n, name); w.value = value; w.callback?.(value); }
            G().setDirtyCanvas(true, true); return n.id;""", {"type": type_, "pos": list(pos), "widgets": widgets or {}})

    def connect(self, src: int, output: str, dst: int, input_: str) -> None:
        self.eval("""const a = N(arg.src), b = N(arg.dst);
            const o = a.findOutputSlot(arg.output), i = b.findInputSlot(arg.input);
            if (o < 0 || i < 0) throw new Error(`no slot ${arg.output} -> ${arg.input}`);
            if (!a.connect(o, b, i)) throw new Error(`cannot connect ${arg.output} -> ${arg.input}`);""",
                  {"src": src, "output": output, "dst": dst, "input": input_})

    def set_widget(self, node: int, name: str, value) -> None:
        """As the front end's own widgets do after an edit: the value, then the widget's callback."""
        self.eval("""const n = N(arg.node), w = W(n, arg.name); w.value = arg.value;
            w.callback?.(w.value, app.canvas, n); G().setDirtyCanvas(true, true);""",
                  {"node": node, "name": name, "value": value})

    def widget_value(self, node: int, name: str):
        return self.eval("return W(N(arg.node), arg.name).value;", {"node": node, "name": name})

    def nodes_of(self, type_: str) -> list[int]:
        return self.eval("return G().nodes.filter((n) => n.type === arg).map((n) => n.id);", type_)

    def prompt(self) -> dict:
        return self.eval("return (await app.graphToPrompt()).output;")

    def overlaps(self) -> list[str]:
        """Pairs of nodes whose boxes (title bar included) overlap, as the graph is laid out now."""
        return self.eval("""const title = LiteGraph.NODE_TITLE_HEIGHT, nodes = G().nodes;
            const box = (n) => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
            const out = [];
            for (let i = 0; i < nodes.length; i++) for (let j = i + 1; j < nodes.length; j++) {
                const a = box(nodes[i]), b = box(nodes[j]);
                const dx = Math.min(a[2], b[2]) - Math.max(a[0], b[0]), dy = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
                if (dx > 0.5 && dy > 0.5) out.push(`${nodes[i].id} ${nodes[i].type} [${nodes[i].size.map(Math.round)}] and ${nodes[j].id} ${nodes[j].type} [${nodes[j].size.map(Math.round)}] by ${Math.round(dx)} x ${Math.round(dy)}`);
            }
            return out;""")

    # --- the view ----------------------------------------------------------------------------
    def focus(self, node: int, scale: float = 1.0) -> None:
        """Show ``node`` in the middle of the canvas at ``scale`` (1 = ComfyUI's 100%)."""
        self.eval("""const n = N(arg.node), c = app.canvas, ds = c.ds;
            const width = c.canvas.clientWidth, height = c.canvas.clientHeight;
            ds.scale = arg.scale;
            ds.offset[0] = width / 2 / arg.scale - (n.pos[0] + n.size[0] / 2);
            ds.offset[1] = height / 2 / arg.scale - (n.pos[1] + n.size[1] / 2);
            c.setDirty(true, true); c.draw(true, true);""", {"node": node, "scale": scale})
        self.frames()

    def fit_all(self) -> None:
        """The whole graph in view (at most 100%)."""
        self.eval("""const nodes = G().nodes; if (!nodes.length) return;
            const title = LiteGraph.NODE_TITLE_HEIGHT, c = app.canvas, ds = c.ds;
            const left = Math.min(...nodes.map((n) => n.pos[0])) - 20, top = Math.min(...nodes.map((n) => n.pos[1] - title)) - 20;
            const right = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 20, bottom = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 20;
            const width = c.canvas.clientWidth, height = c.canvas.clientHeight;
            ds.scale = Math.min(1, width / (right - left), height / (bottom - top));
            ds.offset[0] = (width / ds.scale - (right - left)) / 2 - left;
            ds.offset[1] = (height / ds.scale - (bottom - top)) / 2 - top;
            c.setDirty(true, true); c.draw(true, true);""")
        self.frames()

    def frames(self, count: int = 3) -> None:
        self.page.evaluate("""async (count) => { for (let i = 0; i < count; i++)
            await new Promise((r) => requestAnimationFrame(r)); }""", count)
        time.sleep(0.15)      # the front end moves DOM widgets after the canvas draws

    def node_box(self, node: int, pad: int = 0) -> dict:
        """The node's rectangle on the page (title bar included), in CSS pixels."""
        return self.eval("""const n = N(arg.node), c = app.canvas, ds = c.ds, r = c.canvas.getBoundingClientRect();
            const title = LiteGraph.NODE_TITLE_HEIGHT;
            return {x: r.left + (n.pos[0] + ds.offset[0]) * ds.scale - arg.pad,
                    y: r.top + (n.pos[1] - title + ds.offset[1]) * ds.scale - arg.pad,
                    width: n.size[0] * ds.scale + 2 * arg.pad, height: (n.size[1] + title) * ds.scale + 2 * arg.pad};""",
                         {"node": node, "pad": pad})

    def screenshot_node(self, node: int, path: str, pad: int = 8) -> None:
        """The node alone at 100% zoom: no focus ring, no tooltip of the mouse."""
        self.page.evaluate("() => document.activeElement?.blur?.()")
        self.page.mouse.move(1, 1)
        self.focus(node)
        self.page.screenshot(path=path, clip=self.node_box(node, pad))

    def click_canvas(self, node: int, x: float, y: float) -> None:
        """A real mouse click at (x, y) in the node's own coordinates (0, 0 = top left below the title)."""
        point = self.eval("""const n = N(arg.node), c = app.canvas, ds = c.ds, r = c.canvas.getBoundingClientRect();
            return [r.left + (n.pos[0] + arg.x + ds.offset[0]) * ds.scale, r.top + (n.pos[1] + arg.y + ds.offset[1]) * ds.scale];""",
                          {"node": node, "x": x, "y": y})
        self.page.mouse.click(point[0], point[1])

    def widget_box(self, node: int, name: str) -> dict:
        """The widget's y and height inside the node (node coordinates)."""
        return self.eval("""const n = N(arg.node), w = W(n, arg.name);
            return {y: w.y ?? w.last_y, height: w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT, width: n.size[0]};""",
                         {"node": node, "name": name})

    def layout(self, node: int, panel: str) -> dict:
        """Where the panel widget sits in its node, against the node's other widgets, and whether its
        element's content fits it (at the current zoom)."""
        return self.eval("""const n = N(arg.node);
            const widgets = n.widgets.map((w) => ({name: w.name, y: w.y ?? w.last_y,
                height: w.computedHeight ?? (w.computeSize ? w.computeSize(n.size[0])[1] : LiteGraph.NODE_WIDGET_HEIGHT)}));
            const panel = widgets.find((w) => w.name === arg.panel);
            const others = widgets.filter((w) => w.name !== arg.panel);
            const element = n.__rettention?.element;
            const c = app.canvas, ds = c.ds, r = c.canvas.getBoundingClientRect();
            const nodeBox = {left: r.left + (n.pos[0] + ds.offset[0]) * ds.scale, top: r.top + (n.pos[1] + ds.offset[1]) * ds.scale,
                             right: r.left + (n.pos[0] + n.size[0] + ds.offset[0]) * ds.scale,
                             bottom: r.top + (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale};
            let box = null, overflow = [], fonts = [];
            if (element) {
                const b = element.getBoundingClientRect();
                box = {left: b.left, top: b.top, right: b.right, bottom: b.bottom, width: b.width, height: b.height,
                       visible: !!(element.offsetParent || element.getClientRects().length)};
                const check = [element, ...element.querySelectorAll(".rettention-row, .rettention-cells, .rettention-densities, .rettention-summary, .rettention-legend, .rettention-report-head, .rettention-report-rows, .rettention-message")];
                for (const e of check) {
                    if (e.hidden || !e.getClientRects().length) continue;
                    if (e.scrollHeight > e.clientHeight + 1) overflow.push(`${e.className}: content ${e.scrollHeight} px in ${e.clientHeight} px`);
                    const s = getComputedStyle(e);
                    fonts.push(parseFloat(s.fontSize));
                }
            }
            return {size: [n.size[0], n.size[1]], min: n.computeSize(), panel, others, nodeBox, box, overflow,
                    minFont: fonts.length ? Math.min(...fonts) : null, scale: ds.scale};""", {"node": node, "panel": panel})

    # --- the pack's panels -------------------------------------------------------------------
    def strip(self, node: int) -> dict:
        return self.eval("""const n = N(arg), e = n.__rettention?.element;
            if (!e) return null;
            const shown = (s) => { const x = e.querySelector(s); return x && !x.hidden ? x.textContent : null; };
            return {state: e.dataset.state, query: e.dataset.query ?? null, renderedQuery: e.dataset.renderedQuery ?? null,
                    cells: [...e.querySelectorAll(".rettention-cells .rettention-cell")].map((c) =>
                        ({mode: c.dataset.mode, letter: c.textContent, density: c.dataset.density === "" ? null : Number(c.dataset.density),
                          title: c.title})),
                    cellsShown: !e.querySelector(".rettention-cells").hidden,
                    segments: [...e.querySelectorAll(".rettention-densities .rettention-segment")].map((s) => [s.textContent, Number(s.style.flexGrow)]),
                    summary: shown(".rettention-summary"), message: shown(".rettention-message"),
                    steps: e.querySelector(".rettention-steps").value, density: e.querySelector(".rettention-density").value};""",
                         node)

    def wait_strip(self, node: int, *fragments: str, timeout_ms: int = 15_000) -> dict:
        """Wait until the strip shows the answer to its latest request, that request holds the node's
        current widget values and every ``key=value`` fragment given."""
        self.wait("""const n = N(arg.node), e = n.__rettention?.element; if (!e) return false;
            const q = e.dataset.renderedQuery; if (!q || q !== e.dataset.query) return false;
            const params = new URLSearchParams(q);
            const current = n.widgets.filter((w) => arg.inputs.includes(w.name)).every((w) => params.get(w.name) === String(w.value));
            return current && arg.fragments.every((f) => { const [k, v] = f.split("="); return params.get(k) === v; });""",
                  {"node": node, "fragments": list(fragments), "inputs": list(SCHEDULE_INPUTS)}, timeout_ms)
        return self.strip(node)

    def report(self, node: int) -> dict | None:
        return self.eval("""const e = N(arg).__rettention?.element; if (!e) return null;
            const values = {};
            for (const v of e.querySelectorAll(".rettention-value")) values[v.dataset.key] = v.textContent;
            const cells = e.querySelector(".rettention-cells");
            values.plan = cells.hidden ? null : cells.dataset.plan ?? null;
            return {status: e.dataset.status, badge: e.querySelector(".rettention-badge").textContent,
                    time: e.querySelector(".rettention-report-time").textContent, values,
                    rowsShown: !e.querySelector(".rettention-report-rows").hidden,
                    message: (() => { const m = e.querySelector(".rettention-message"); return m.hidden ? null : m.textContent; })(),
                    cells: [...e.querySelectorAll(".rettention-cell")].map((c) => c.dataset.mode),
                    report: e.dataset.report ? JSON.parse(e.dataset.report) : null};""", node)

    def wait_report(self, node: int, not_before: int | None = None, timeout_ms: int = 240_000) -> dict:
        """Wait until the node's report panel shows a report received after the ``not_before``-th
        (a value of :meth:`report_count`)."""
        self.wait("""const e = N(arg.node).__rettention?.element;
            return e && e.dataset.status !== "none" && Number(e.dataset.reports ?? 0) > arg.before;""",
                  {"node": node, "before": not_before if not_before is not None else 0}, timeout_ms)
        return self.report(node)

    def report_count(self, node: int) -> int:
        return self.eval("return Number(N(arg).__rettention?.element?.dataset.reports ?? 0);", node)

    def dispatch_report(self, node_id: str, report: dict) -> None:
        """A rettention.report message as the server's would arrive (through ComfyUI's api events)."""
        self.page.evaluate("""([node, report]) => {
            const api = window.comfyAPI?.api?.api; if (!api) throw new Error("no comfyAPI.api");
            api.dispatchCustomEvent("rettention.report", {node, report}); }""", [node_id, report])

    # --- running -----------------------------------------------------------------------------
    def queue(self) -> None:
        self.page.evaluate("async () => { await app.queuePrompt(0, 1); }")

    def dump(self) -> str:
        return json.dumps(self.messages()[-30:], indent=1)
