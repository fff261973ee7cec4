"""ComfyUI nodes and the ComfyUI adapter of Re-ttention (imports ComfyUI; the core in ../rettention does not)."""
