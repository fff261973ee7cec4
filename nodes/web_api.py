"""What the front end (web/rettention.js) gets from the server: the plan of a Sparsity Schedule for a
step count (a route under the pack's prefix, computed by the core's planner) and, after each run of a
patched model, that run's report (a PromptServer message to the Patch Model node)."""
from __future__ import annotations

import logging

from ..rettention import run_progress
from .inputs import check_unit, schedule_from_widgets

log = logging.getLogger("rettention")

PLAN_ROUTE = "/rettention/plan"
REPORT_EVENT = "rettention.report"
MAX_STEPS = 1000


def plan_for(query) -> dict:
    """The plan of the Sparsity Schedule widget values in ``query`` (a mapping of strings) for
    ``steps`` steps of a plain run (KSampler's simple / normal schedulers: step i starts at i/steps of the
    run), at ``density``. A ValueError names a bad value."""
    try:
        steps = int(query.get("steps", 20))
    except ValueError:
        raise ValueError(f"steps must be an integer, got {query.get('steps')!r}") from None
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    density = check_unit("density", query.get("density", 0.0625), open_low=True)
    schedule = schedule_from_widgets(query.get("start_percent", 0.25), query.get("end_percent", 1.0),
                                     query.get("capture_every", 5), query.get("density_steps", ""),
                                     query.get("weight", "one"), query.get("ramp", 0.04))
    plan = schedule.plan(run_progress(steps), density)
    return {"steps": steps, "summary": plan.summary(), "modes": list(plan.modes), "densities": list(plan.densities),
            "note": plan.note, "sparse_steps": plan.sparse_steps, "full_cost_steps": steps - plan.sparse_steps}


def register_routes() -> None:
    """Add the plan route to ComfyUI's server, when there is one (not when ComfyUI runs without it)."""
    try:
        from aiohttp import web
        from server import PromptServer
        routes = PromptServer.instance.routes
    except (ImportError, AttributeError):
        return

    @routes.get(PLAN_ROUTE)
    async def plan(request):
        try:
            return web.json_response(plan_for(request.rel_url.query))
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)


def send_report(node_id: str | None, report: dict) -> None:
    """The run's report to the front end, for the Patch Model node ``node_id`` (nothing without a server)."""
    if node_id is None:
        return
    try:
        from server import PromptServer
        server = PromptServer.instance
    except (ImportError, AttributeError):
        return
    try:
        server.send_sync(REPORT_EVENT, {"node": str(node_id), "report": report})
    except Exception as error:      # noqa: BLE001 - a report must never end a run
        log.warning("Re-ttention: could not send the run report to the front end (%s)", error)
