"""Re-ttention for ComfyUI: the ComfyUI entry point only (V3 extension).

Imported outside ComfyUI (pytest collects this folder as a package), it registers nothing.
"""
try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:          # not running inside ComfyUI
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes.rettention_nodes import NODES

    class RettentionExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    async def comfy_entrypoint() -> RettentionExtension:
        return RettentionExtension()
