// Re-ttention for ComfyUI: the front end.
//
// - Re-ttention Sparsity Schedule nodes get a strip under their widgets: one cell per sampling step
//   (dense / capture / sparse), the density of each step and one line of totals, computed by the
//   server (GET /rettention/plan) from the node's widget values, a step count and a density typed
//   on the strip. It follows every change of the node's widgets.
// - Re-ttention Patch Model nodes get a panel with the report of the last sampling run of the model
//   they patched (PromptServer message "rettention.report"): status, plan, attention calls, achieved
//   density, stats peak, attention time saved and why anything went dense.
//
// Nothing here may break a graph: every hook runs inside try/catch and logs one console.warn
// prefixed "[Re-ttention]"; without the pack's node types nothing is added.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TAG = "[Re-ttention]";
const SCHEDULE_TYPE = "RettentionSparsitySchedule";
const PATCH_TYPE = "RettentionPatchModel";
const PLAN_ROUTE = "/rettention/plan";
const REPORT_EVENT = "rettention.report";
const STRIP_WIDGET = "rettention_plan_strip";
const REPORT_WIDGET = "rettention_run_report";
const PREVIEW_PROPERTY = "rettention_preview";   // {steps, density} typed on the strip, saved with the workflow
const DEFAULT_STEPS = 20;
const DEFAULT_DENSITY = 0.0625;
const DEBOUNCE_MS = 250;
const PANEL_MARGIN = 6;          // around each panel, inside the node
const STRIP_HEIGHT = 124;        // the strip's widget height, margins included
const REPORT_HEIGHT = 148;
const MIN_WIDTH = 340;           // node width the panels are laid out for (the example workflows' width)
const MODE_LETTER = { dense: "D", capture: "C", sparse: "S" };
const LETTER_MODE = { D: "dense", C: "capture", S: "sparse" };

// ---------------------------------------------------------------------------------------------
// Errors: one console.warn per failing hook, never an exception into ComfyUI.
const warned = new Set();

function warn(where, error) {
    const key = `${where}: ${error && error.message}`;
    if (warned.has(key)) return;
    warned.add(key);
    console.warn(`${TAG} ${where} failed; the graph is unaffected:`, error);
}

function guard(where, fn) {
    try {
        return fn();
    } catch (error) {
        warn(where, error);
        return undefined;
    }
}

/** proto[name] = original (as it was, its errors its own) then ours (guarded). */
function chain(proto, name, ours) {
    const original = proto[name];
    proto[name] = function (...args) {
        const result = typeof original === "function" ? original.apply(this, args) : undefined;
        guard(`${name}`, () => ours.apply(this, args));
        return result;
    };
}

// ---------------------------------------------------------------------------------------------
// Formatting and DOM helpers (textContent only: nothing from the server is parsed as HTML).
function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
}

function percent(fraction) {
    if (typeof fraction !== "number" || !isFinite(fraction)) return "—";
    const value = fraction * 100;
    return `${value >= 100 ? value.toFixed(0) : String(Number(value.toPrecision(3)))}%`;
}

function plural(count, word) {
    return `${count} ${word}${count === 1 ? "" : "s"}`;
}

const STYLE = `
.rettention-strip, .rettention-report {
    box-sizing: border-box; width: 100%; height: 100%; padding: 4px 6px; overflow: hidden;
    font: 11px/1.35 system-ui, -apple-system, "Segoe UI", sans-serif;
    color: var(--input-text, var(--fg-color, #ddd));
    background: var(--comfy-input-bg, rgba(0, 0, 0, 0.25));
    border: 1px solid var(--border-color, #4b4b4b); border-radius: 6px;
    display: flex; flex-direction: column; gap: 4px;
}
.rettention-strip [hidden], .rettention-report [hidden] { display: none !important; }
.rettention-row { display: flex; align-items: center; gap: 8px; min-height: 18px; white-space: nowrap; }
.rettention-row label { display: flex; align-items: center; gap: 4px; opacity: 0.85; }
.rettention-row input {
    width: 62px; height: 20px; box-sizing: border-box; padding: 0 4px; font: inherit;
    color: inherit; background: var(--comfy-menu-bg, #1e1e1e);
    border: 1px solid var(--border-color, #555); border-radius: 4px;
}
.rettention-legend { display: flex; gap: 10px; opacity: 0.9; min-height: 14px; }
.rettention-legend span { display: flex; align-items: center; gap: 3px; }
.rettention-swatch { width: 10px; height: 10px; border-radius: 2px; display: inline-block; }
.rettention-cells { display: flex; gap: 1px; height: 20px; min-height: 20px; }
.rettention-cells.rettention-small { height: 13px; min-height: 13px; flex: 1 1 auto; }
.rettention-cells.rettention-small .rettention-cell { font-size: 9px; }
.rettention-cell {
    flex: 1 1 0; min-width: 1px; border-radius: 2px; display: flex; align-items: center;
    justify-content: center; font-weight: 600; font-size: 10px; overflow: hidden; cursor: default;
}
.rettention-cells.rettention-many .rettention-cell { font-size: 0; }
.rettention-cell[data-mode="dense"], .rettention-swatch[data-mode="dense"] { background: #64748b; color: #f8fafc; }
.rettention-cell[data-mode="capture"], .rettention-swatch[data-mode="capture"] { background: #f59e0b; color: #1c1917; }
.rettention-cell[data-mode="sparse"], .rettention-swatch[data-mode="sparse"] { background: #22c55e; color: #052e16; }
.rettention-cell[data-mode="unknown"] { background: #7f1d1d; color: #fff; }
.rettention-densities { display: flex; gap: 1px; height: 14px; min-height: 14px; }
.rettention-segment {
    flex: 1 1 0; min-width: 1px; overflow: hidden; text-overflow: clip; white-space: nowrap;
    text-align: center; font-size: 10px; line-height: 12px; opacity: 0.9;
    border-top: 2px solid rgba(148, 163, 184, 0.55);
}
.rettention-segment[data-sparse="1"] { border-top-color: rgba(34, 197, 94, 0.8); }
.rettention-summary { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.rettention-message { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; opacity: 0.8; font-style: italic; }
.rettention-message[data-kind="error"] { color: #fca5a5; opacity: 1; }
.rettention-report { line-height: 1.3; }
.rettention-report-head { display: flex; align-items: center; gap: 6px; white-space: nowrap; min-height: 16px; }
.rettention-report-head .rettention-cells { min-width: 24px; }
.rettention-badge { padding: 0 6px; border-radius: 8px; font-weight: 600; line-height: 15px; background: #475569; color: #f8fafc; flex: none; }
.rettention-family { flex: none; opacity: 0.85; }
.rettention-report[data-status="finished"] .rettention-badge { background: #15803d; }
.rettention-report[data-status="cancelled"] .rettention-badge { background: #b45309; }
.rettention-report[data-status="failed"] .rettention-badge { background: #b91c1c; }
.rettention-report-time { margin-left: auto; opacity: 0.6; flex: none; }
.rettention-report-rows { display: grid; grid-template-columns: max-content minmax(0, 1fr); column-gap: 8px; row-gap: 1px; }
.rettention-report-rows .rettention-key { opacity: 0.7; white-space: nowrap; }
.rettention-report-rows .rettention-value { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }
.rettention-report-rows .rettention-value[data-key="plan"] { display: flex; align-items: center; }
.rettention-report-rows .rettention-value[data-key="calls"], .rettention-report-rows .rettention-value[data-key="dense_reasons"] {
    white-space: normal; overflow-wrap: anywhere; display: -webkit-box; -webkit-box-orient: vertical;
    -webkit-line-clamp: 2; line-clamp: 2; height: 2.6em;
}
`;

function injectStyle() {
    if (document.getElementById("rettention-style")) return;
    const style = el("style");
    style.id = "rettention-style";
    style.textContent = STYLE;
    document.head.appendChild(style);
}

/** The node is at least MIN_WIDTH wide wherever ComfyUI asks its size (new nodes, loaded workflows). */
function widenNode(node) {
    const computeSize = node.computeSize;
    node.computeSize = function (...args) {
        const size = computeSize.apply(this, args);
        try {
            size[0] = Math.max(size[0], MIN_WIDTH);
        } catch (error) {
            warn("computeSize", error);
        }
        return size;
    };
}

function fitNode(node) {
    const size = node.computeSize();
    const width = Math.max(node.size[0], size[0], MIN_WIDTH);
    const height = Math.max(node.size[1], size[1]);
    if (width !== node.size[0] || height !== node.size[1]) node.setSize([width, height]);
    node.setDirtyCanvas?.(true, true);
}

/** A DOM widget of fixed height that is never sent with the prompt nor saved as a widget value. */
function addPanel(node, name, element, height) {
    if (typeof node.addDOMWidget !== "function") throw new Error("this ComfyUI front end has no addDOMWidget");
    const widget = node.addDOMWidget(name, name, element, {
        serialize: false,
        hideOnZoom: true,
        margin: PANEL_MARGIN,
        getValue: () => undefined,
        setValue: () => {},
        getMinHeight: () => height,
        getMaxHeight: () => height,
        getHeight: () => height,
    });
    widget.serialize = false;
    widget.serializeValue = () => undefined;
    widenNode(node);
    // the mouse wheel zooms the canvas over the panel as it does elsewhere (not over its inputs)
    element.addEventListener("wheel", (event) => guard("wheel", () => {
        if (event.target instanceof HTMLInputElement) return;
        app.canvas?.processMouseWheel?.(event);
    }), { passive: true });
    return widget;
}

// ---------------------------------------------------------------------------------------------
// Mode cells (shared by the schedule strip and the report).
function fillCells(container, modes, densities, lettersUpTo = 40) {
    container.replaceChildren();
    container.classList.toggle("rettention-many", modes.length > lettersUpTo);
    modes.forEach((mode, i) => {
        const known = mode in MODE_LETTER ? mode : "unknown";
        const cell = el("div", "rettention-cell", MODE_LETTER[mode] ?? "?");
        cell.dataset.mode = known;
        cell.dataset.step = String(i + 1);
        const density = densities ? densities[i] : undefined;
        cell.dataset.density = typeof density === "number" ? String(density) : "";
        cell.title = `step ${i + 1}: ${mode}` + (typeof density === "number" ? `, density ${percent(density)}` :
            (densities ? ", full attention" : ""));
        container.appendChild(cell);
    });
}

/** Runs of steps with the same density under the cells ("full" on dense steps). */
function fillDensities(container, modes, densities) {
    container.replaceChildren();
    let start = 0;
    for (let i = 1; i <= modes.length; i++) {
        const same = i < modes.length && densities[i] === densities[start];
        if (same) continue;
        const density = densities[start];
        const label = typeof density === "number" ? percent(density) : "full";
        const segment = el("div", "rettention-segment", label);
        segment.style.flexGrow = String(i - start);
        segment.dataset.sparse = typeof density === "number" ? "1" : "0";
        const span = i - start === 1 ? `step ${i}` : `steps ${start + 1}-${i}`;
        segment.title = `${span}: ${typeof density === "number" ? `density ${label}` : "full attention"}`;
        container.appendChild(segment);
        start = i;
    }
}

function legend() {
    const box = el("div", "rettention-legend");
    for (const mode of ["dense", "capture", "sparse"]) {
        const item = el("span");
        const swatch = el("i", "rettention-swatch");
        swatch.dataset.mode = mode;
        item.append(swatch, document.createTextNode(mode));
        box.appendChild(item);
    }
    return box;
}

// ---------------------------------------------------------------------------------------------
// Sparsity Schedule: the plan strip.
function numberInput(className, value, attrs) {
    const input = el("input", className);
    input.type = "number";
    Object.assign(input, attrs);
    input.value = String(value);
    return input;
}

function previewOf(node) {
    const saved = node.properties?.[PREVIEW_PROPERTY];
    return {
        steps: saved && Number.isFinite(Number(saved.steps)) ? Number(saved.steps) : DEFAULT_STEPS,
        density: saved && Number.isFinite(Number(saved.density)) ? Number(saved.density) : DEFAULT_DENSITY,
    };
}

/** The node's own widget values, by name (the inputs of the route), without ours. */
function scheduleValues(node) {
    const values = {};
    for (const widget of node.widgets ?? []) {
        if (!widget || !widget.name || widget.name === STRIP_WIDGET || widget.serialize === false) continue;
        const value = widget.value;
        if (value === null || value === undefined || typeof value === "object") continue;
        values[widget.name] = value;
    }
    return values;
}

function setupSchedule(node) {
    if (node.__rettention) return;
    injectStyle();
    const root = el("div", "rettention-strip");
    root.dataset.state = "loading";
    const preview = previewOf(node);
    const steps = numberInput("rettention-steps", preview.steps, { min: 1, max: 1000, step: 1, title: "Steps to preview (KSampler steps)" });
    const density = numberInput("rettention-density", preview.density, { min: 0.005, max: 1, step: 0.005, title: "Density to preview (Patch Model's density)" });
    const controls = el("div", "rettention-row rettention-controls");
    const stepsLabel = el("label", null, "steps");
    stepsLabel.appendChild(steps);
    const densityLabel = el("label", null, "density");
    densityLabel.appendChild(density);
    controls.append(stepsLabel, densityLabel);
    const cells = el("div", "rettention-cells");
    const densities = el("div", "rettention-densities");
    const summary = el("div", "rettention-summary");
    const key = legend();
    const message = el("div", "rettention-message", "computing the plan…");
    root.append(controls, cells, densities, summary, key, message);
    cells.hidden = densities.hidden = summary.hidden = key.hidden = true;

    const state = { seq: 0, timer: null, key: null, removed: false };

    function show(kind, text) {
        root.dataset.state = kind;
        const ok = kind === "ok";
        cells.hidden = densities.hidden = summary.hidden = key.hidden = !ok;
        message.hidden = ok;
        if (!ok) {
            message.dataset.kind = kind;
            message.textContent = text;
            message.title = text;
        }
    }

    function render(plan) {
        const modes = Array.isArray(plan.modes) ? plan.modes.map(String)
            : String(plan.summary ?? "").split("").map((c) => LETTER_MODE[c] ?? "unknown");
        const dens = Array.isArray(plan.densities) ? plan.densities : modes.map(() => null);
        fillCells(cells, modes, dens);
        fillDensities(densities, modes, dens);
        const total = Number.isFinite(plan.steps) ? plan.steps : modes.length;
        const sparse = Number.isFinite(plan.sparse_steps) ? plan.sparse_steps : modes.filter((m) => m === "sparse").length;
        const full = Number.isFinite(plan.full_cost_steps) ? plan.full_cost_steps : total - sparse;
        const text = `${plural(total, "step")}: ${full} at full cost, ${sparse} sparse` + (plan.note ? ` · ${plan.note}` : "");
        summary.textContent = text;
        summary.title = text;
        root.dataset.summary = modes.map((m) => MODE_LETTER[m] ?? "?").join("");
        show("ok");
    }

    async function refresh() {
        const seq = ++state.seq;
        const shown = (text) => { root.dataset.renderedQuery = text; };
        const query = new URLSearchParams();
        for (const [name, value] of Object.entries(scheduleValues(node))) query.set(name, String(value));
        query.set("steps", steps.value.trim());
        query.set("density", density.value.trim());
        root.dataset.query = query.toString();
        let plan;
        try {
            const response = await (api?.fetchApi ? api.fetchApi(`${PLAN_ROUTE}?${query}`) : fetch(`${PLAN_ROUTE}?${query}`));
            let body = null;
            try { body = await response.json(); } catch (_) { body = null; }
            if (seq !== state.seq || state.removed) return;
            if (!response.ok) {
                show("error", `No plan: ${body && body.error ? body.error : `the server answered ${response.status}`}`);
                shown(query.toString());
                return;
            }
            plan = body;
        } catch (error) {
            if (seq !== state.seq || state.removed) return;
            show("error", `No plan: the server could not be reached (${error && error.message ? error.message : error})`);
            shown(query.toString());
            return;
        }
        if (!plan || typeof plan !== "object") show("error", "No plan: the server's answer was not understood");
        else render(plan);
        shown(query.toString());
    }

    function schedule(delay = DEBOUNCE_MS) {
        if (state.removed) return;
        clearTimeout(state.timer);
        state.timer = setTimeout(() => guard("plan request", () => {
            refresh().catch((error) => warn("plan request", error));
        }), delay);
    }

    /** Something may have changed: refresh when the values differ from the last ones asked. */
    function check(delay) {
        const key = JSON.stringify([scheduleValues(node), steps.value, density.value]);
        if (key === state.key) return;
        state.key = key;
        schedule(delay);
    }

    function remember() {
        node.properties = node.properties ?? {};
        node.properties[PREVIEW_PROPERTY] = { steps: Number(steps.value), density: Number(density.value) };
    }

    for (const input of [steps, density]) {
        input.addEventListener("input", () => guard("strip input", () => { remember(); check(); }));
        input.addEventListener("change", () => guard("strip input", () => { remember(); check(0); }));
        input.addEventListener("keydown", (event) => event.stopPropagation());
    }
    for (const widget of node.widgets ?? []) {
        if (!widget || widget.name === STRIP_WIDGET) continue;
        const callback = widget.callback;
        widget.callback = function (...args) {
            const result = typeof callback === "function" ? callback.apply(this, args) : undefined;
            guard("widget callback", () => check());
            return result;
        };
    }

    addPanel(node, STRIP_WIDGET, root, STRIP_HEIGHT);
    node.__rettention = {
        check,
        refresh,
        element: root,
        configured() {       // the node was (re)loaded: values typed on the strip come from its properties
            const saved = previewOf(node);
            steps.value = String(saved.steps);
            density.value = String(saved.density);
            check(0);
        },
        removed() {
            state.removed = true;
            clearTimeout(state.timer);
        },
    };
    fitNode(node);
    check(0);
}

// ---------------------------------------------------------------------------------------------
// Patch Model: the report of the last run.
const patchNodes = new Set();

function describeCalls(calls) {
    if (!calls || typeof calls !== "object") return "—";
    const order = ["capture", "sparse", "dense", "passthrough"];
    const keys = [...order.filter((k) => k in calls), ...Object.keys(calls).filter((k) => !order.includes(k))];
    return keys.length ? keys.map((k) => `${calls[k]} ${k}`).join(" · ") : "none";
}

function describePeak(report) {
    const mb = report.stats_peak_mb;
    if (typeof mb !== "number" || !isFinite(mb)) return "—";
    const size = mb >= 100 ? mb.toFixed(0) : mb >= 0.1 ? mb.toFixed(1) : mb > 0 ? mb.toPrecision(2) : "0";
    return `${size} MB` + (report.stats_device ? ` on ${report.stats_device}` : "");
}

function describeSaved(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "not measured";
    const text = `${Math.abs(seconds) >= 10 ? seconds.toFixed(1) : seconds.toFixed(2)} s`;
    return seconds < 0 ? `${text} (slower than dense)` : text;
}

function setupPatch(node) {
    if (node.__rettention) return;
    injectStyle();
    const root = el("div", "rettention-report");
    root.dataset.status = "none";
    const head = el("div", "rettention-report-head");
    const badge = el("span", "rettention-badge", "no run yet");
    const family = el("span", "rettention-family");
    const cells = el("div", "rettention-cells rettention-small");
    const time = el("span", "rettention-report-time");
    head.append(badge, family, cells, time);
    cells.hidden = true;
    const rows = el("div", "rettention-report-rows");
    const message = el("div", "rettention-message", "Queue the workflow: the report of its last run shows here.");
    const values = {};
    for (const [key, label, long] of [
        ["calls", "calls", "attention calls of the run, by how the pack ran them"],
        ["density", "achieved density", "the fraction of the attention the sparse steps computed"],
        ["stats", "stats peak", "the most memory the cached statistics held, and where"],
        ["saved", "time saved", "attention time saved against dense attention"],
        ["dense_reasons", "dense because", "why attention ran dense beyond the plan's dense steps"]]) {
        const name = el("span", "rettention-key", label);
        name.title = long;
        const value = el("span", "rettention-value");
        value.dataset.key = key;
        rows.append(name, value);
        values[key] = value;
    }
    root.append(head, rows, message);
    rows.hidden = true;

    function set(key, text) {
        values[key].textContent = text;
        values[key].title = text;
    }

    function showReport(report) {
        if (!report || typeof report !== "object") return;
        const status = String(report.status ?? "unknown");
        const plan = String(report.plan ?? "");
        const stepsRun = Number.isFinite(report.steps_run) ? report.steps_run : null;
        const where = stepsRun !== null ? ` at step ${stepsRun}${plan ? ` of ${plan.length}` : ""}` : "";
        root.dataset.status = status;
        badge.textContent = status === "finished" ? "finished" : status === "cancelled" ? `cancelled${where}`
            : status === "failed" ? `failed${where}` : status;
        family.textContent = report.family ? String(report.family) : "";
        time.textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
        time.title = `report received ${new Date().toLocaleString()}`;
        fillCells(cells, plan.split("").map((c) => LETTER_MODE[c] ?? "unknown"), null, 12);
        cells.title = plan ? `plan: ${plan} (${plural(plan.length, "step")}: D dense, C capture, S sparse)` : "";
        cells.dataset.plan = plan;
        cells.hidden = plan.length === 0;
        set("calls", describeCalls(report.calls));
        set("density", percent(report.density));
        set("stats", describePeak(report));
        set("saved", describeSaved(report.saved_seconds));
        const reasons = Array.isArray(report.dense_reasons) ? report.dense_reasons.map(String) : [];
        set("dense_reasons", reasons.length ? reasons.join("; ") : "nothing went dense");
        rows.hidden = false;
        message.hidden = true;
        root.dataset.report = JSON.stringify(report);
        root.dataset.reports = String(Number(root.dataset.reports ?? 0) + 1);
    }

    addPanel(node, REPORT_WIDGET, root, REPORT_HEIGHT);
    patchNodes.add(node);
    node.__rettention = {
        showReport,
        element: root,
        configured() {},
        removed() { patchNodes.delete(node); },
    };
    fitNode(node);
}

function rootGraph() {
    return app.rootGraph ?? app.graph;
}

/** The node the server's id names: its id on the client; inside a subgraph the server's id is the
 *  path of ids ("12:5"), whose last part is the node's id in its own graph. */
function reportTargets(id) {
    const exact = [...patchNodes].filter((node) => String(node.id) === id);
    if (exact.length || !id.includes(":")) return exact;
    const last = id.split(":").pop();
    return [...patchNodes].filter((node) => String(node.id) === last && node.graph && node.graph !== rootGraph());
}

function onReport(event) {
    const detail = event && event.detail;
    if (!detail || detail.node === undefined || detail.node === null) return;
    for (const node of reportTargets(String(detail.node))) node.__rettention.showReport(detail.report);
    rootGraph()?.setDirtyCanvas?.(true, true);
}

// ---------------------------------------------------------------------------------------------
function instrument(nodeType, setup) {
    const proto = nodeType.prototype;
    chain(proto, "onNodeCreated", function () { setup(this); });
    chain(proto, "onConfigure", function () {
        this.__rettention?.configured();
        fitNode(this);
    });
    chain(proto, "onWidgetChanged", function () { this.__rettention?.check?.(); });
    chain(proto, "onDrawForeground", function () { this.__rettention?.check?.(); });
    chain(proto, "onRemoved", function () { this.__rettention?.removed(); });
}

guard("register", () => app.registerExtension({
    name: "rettention.ui",
    beforeRegisterNodeDef(nodeType, nodeData) {
        guard("beforeRegisterNodeDef", () => {
            const name = nodeData && nodeData.name;
            if (name === SCHEDULE_TYPE) instrument(nodeType, setupSchedule);
            else if (name === PATCH_TYPE) instrument(nodeType, setupPatch);
        });
    },
    setup() {
        guard("setup", () => api.addEventListener(REPORT_EVENT, (event) => guard(REPORT_EVENT, () => onReport(event))));
    },
}));
