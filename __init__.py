"""Re-ttention for ComfyUI: the ComfyUI entry point only (V3 extension)."""
from comfy_api.latest import ComfyExtension, io

from .nodes.rettention_nodes import NODES

WEB_DIRECTORY = None


class RettentionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> RettentionExtension:
    return RettentionExtension()
