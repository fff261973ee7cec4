"""Re-ttention for ComfyUI: the ComfyUI entry point only (V3 extension, and the front end in web/).

Imported outside ComfyUI (pytest collects this folder as a package), it registers nothing.
"""
try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:          # not running inside ComfyUI
    ComfyExtension = None

WEB_DIRECTORY = "./web"

if ComfyExtension is not None:
    from .nodes.rettention_nodes import NODES
    from .nodes.web_api import register_routes

    class RettentionExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    async def comfy_entrypoint() -> RettentionExtension:
        register_routes()
        return RettentionExtension()
