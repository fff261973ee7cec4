"""Writes the example workflows (ComfyUI UI format) to workflows/, the one folder ComfyUI's
templates browser reads for this pack (or to --out DIR).

    python workflows/build_workflows.py [--out DIR]
"""
import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = [HERE]
THUMBNAILS = [True]
TITLES = {"RettentionPatchModel": "Re-ttention Patch Model", "RettentionSparsitySchedule": "Re-ttention Sparsity Schedule",
          "RettentionCalibrateStats": "Re-ttention Calibrate Stats", "RettentionLoadStats": "Re-ttention Load Stats",
          "KSamplerAdvanced": "KSampler (Advanced)", "CLIPTextEncode": "CLIP Text Encode", "UNETLoader": "Load Diffusion Model"}
OUT_TYPES = {"UNETLoader": ["MODEL"], "DualCLIPLoader": ["CLIP"], "CLIPLoader": ["CLIP"], "VAELoader": ["VAE"],
             "CLIPTextEncode": ["CONDITIONING"], "FluxGuidance": ["CONDITIONING"], "EmptySD3LatentImage": ["LATENT"],
             "EmptyLatentImage": ["LATENT"], "EmptyHunyuanLatentVideo": ["LATENT"], "KSampler": ["LATENT"],
             "KSamplerAdvanced": ["LATENT"], "VAEDecode": ["IMAGE"], "SaveImage": [], "ModelSamplingSD3": ["MODEL"],
             "RettentionPatchModel": ["MODEL"], "RettentionSparsitySchedule": ["RETTENTION_SCHEDULE"],
             "RettentionCalibrateStats": ["MODEL"], "RettentionLoadStats": ["RETTENTION_STATS"], "Note": []}
# Room the front end's own widgets take below the regular ones (the Re-ttention strip and report), and
# the least height the front end gives a node (it counts optional inputs too).
EXTRA_HEIGHT = {"RettentionSparsitySchedule": 170, "RettentionPatchModel": 150, "Note": 60, "CLIPTextEncode": 90}
MIN_HEIGHT = {"RettentionPatchModel": 380, "RettentionSparsitySchedule": 320}
WIDTH, GAP = 340, 40


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, type_, widgets, title=None, **inputs):
        node_id = len(self.nodes) + 1
        node = {"id": node_id, "type": type_, "pos": [0, 0], "size": [WIDTH, 0],
                "flags": {}, "order": node_id - 1, "mode": 0, "inputs": [], "properties": {"Node name for S&R": type_},
                "outputs": [{"name": t, "type": t, "links": [], "slot_index": i} for i, t in enumerate(OUT_TYPES[type_])],
                "widgets_values": widgets}
        if title:
            node["title"] = title
        self.nodes.append(node)
        for name, (source, slot) in inputs.items():
            link_id = len(self.links) + 1
            src = self.nodes[source - 1]
            kind = src["outputs"][slot]["type"]
            node["inputs"].append({"name": name, "type": kind, "link": link_id})
            src["outputs"][slot]["links"].append(link_id)
            self.links.append([link_id, source, slot, node_id, len(node["inputs"]) - 1, kind])
        return node_id

    def layout(self):
        """Columns by data flow (a node right of every node it reads), stacked top to bottom, each node as
        tall as its widgets, sockets and the front end's own widget need: nothing overlaps."""
        column = {}
        for node in self.nodes:                   # nodes are added after their sources
            sources = [link[1] for link in self.links if link[3] == node["id"]]
            column[node["id"]] = 1 + max((column[s] for s in sources), default=-1)
        tops = {}
        for node in self.nodes:
            c = column[node["id"]]
            sockets = max(len(node["inputs"]), len(node["outputs"]))
            height = 30 + 22 * sockets + 26 * len(node["widgets_values"]) + EXTRA_HEIGHT.get(node["type"], 0)
            if node["type"] == "Note":
                height = 30 + 18 * (len(node["widgets_values"][0]) // 45 + 1) + EXTRA_HEIGHT["Note"]
            height = max(height, MIN_HEIGHT.get(node["type"], 0))
            node["pos"] = [40 + c * (WIDTH + GAP), tops.get(c, 40)]
            node["size"] = [WIDTH, height]
            tops[c] = tops.get(c, 40) + height + GAP

    def thumbnail(self, path, width=960):
        """A picture of the graph for ComfyUI's templates browser (it shows workflows/<name>.jpg beside
        the JSON): each node a box with its title, coloured by kind, and its links, at the JSON's layout."""
        from PIL import Image, ImageDraw, ImageFont

        right = max(n["pos"][0] + n["size"][0] for n in self.nodes) + 40
        bottom = max(n["pos"][1] + n["size"][1] for n in self.nodes) + 40
        scale = width / right
        image = Image.new("RGB", (width, max(200, int(bottom * scale))), (24, 24, 27))
        draw = ImageDraw.Draw(image)
        try:
            font = ImageFont.truetype("DejaVuSans.ttf", max(9, int(13 * scale * 2)))
        except OSError:
            font = ImageFont.load_default()
        box = {n["id"]: [v * scale for v in (n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0],
                                             n["pos"][1] + n["size"][1])] for n in self.nodes}
        for _, src, _, dst, _, _ in self.links:
            a, b = box[src], box[dst]
            draw.line([(a[2], a[1] + 12), (b[0], b[1] + 12)], fill=(110, 110, 130), width=2)
        for node in self.nodes:
            x0, y0, x1, y1 = box[node["id"]]
            pack = node["type"].startswith("Rettention")
            fill = (46, 90, 62) if pack else (58, 58, 64) if node["type"] != "Note" else (70, 64, 40)
            draw.rounded_rectangle([x0, y0, x1, y1], radius=4, fill=fill, outline=(90, 90, 100))
            title = node.get("title") or TITLES.get(node["type"], node["type"])
            while len(title) > 3 and draw.textlength(title, font=font) > x1 - x0 - 8:
                title = title[:-2].rstrip() + "…" if not title.endswith("…") else title[:-2] + "…"
            draw.text((x0 + 4, y0 + 3), title, fill=(235, 235, 235), font=font)
        image.save(path, quality=88)

    def dump(self, name):
        self.layout()
        data = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
        with open(os.path.join(OUT[0], name + ".json"), "w") as f:
            json.dump(data, f, indent=1)
        if THUMBNAILS[0]:
            self.thumbnail(os.path.join(OUT[0], name + ".jpg"))


def patch(g, model, density=0.0625, mask="auto", stats_file="none", schedule=None, stats=None, title=None):
    extra = {"schedule": (schedule, 0)} if schedule else {}
    if stats:
        extra["stats"] = (stats, 0)
    return g.add("RettentionPatchModel", [density, mask, "auto", False, stats_file, 0.05], title=title,
                 model=(model, 0), **extra)


def flux_inputs(g):
    unet = g.add("UNETLoader", ["flux1-dev.safetensors", "default"])
    clip = g.add("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"])
    vae = g.add("VAELoader", ["ae.safetensors"])
    pos = g.add("CLIPTextEncode", ["a red fox in a snowy forest, golden hour"], clip=(clip, 0))
    neg = g.add("CLIPTextEncode", [""], clip=(clip, 0))
    guided = g.add("FluxGuidance", [3.5], conditioning=(pos, 0))
    latent = g.add("EmptySD3LatentImage", [1024, 1024, 1])
    return unet, vae, guided, neg, latent


def flux_sample(g, model, vae, positive, negative, latent, prefix):
    sampled = g.add("KSampler", [0, "fixed", 20, 1.0, "euler", "simple", 1.0], model=(model, 0),
                    positive=(positive, 0), negative=(negative, 0), latent_image=(latent, 0))
    g.add("SaveImage", [prefix], images=(g.add("VAEDecode", [], samples=(sampled, 0), vae=(vae, 0)), 0))


def flux():
    g = Graph()
    unet, vae, guided, neg, latent = flux_inputs(g)
    schedule = g.add("RettentionSparsitySchedule", [0.25, 1.0, 5, "", "one", 0.04])
    flux_sample(g, patch(g, unet, schedule=schedule), vae, guided, neg, latent, "rettention_flux")
    g.dump("rettention_flux_t2i")


def flux_calibrate():
    """Step 1 of 2: a dense run that records models/rettention/flux_calibration.safetensors."""
    g = Graph()
    g.add("Note", ["Step 1 of 2. Queue this once: it samples with dense attention and writes "
                   "models/rettention/flux_calibration.safetensors when the run ends. Then open "
                   "rettention_flux_with_stats (step 2), which reads it."])
    unet, vae, guided, neg, latent = flux_inputs(g)
    calib = g.add("RettentionCalibrateStats", ["flux_calibration", 0.0625, "auto", 0.04], model=(unet, 0))
    flux_sample(g, calib, vae, guided, neg, latent, "rettention_calibration")
    g.dump("rettention_flux_calibrate")


def flux_with_stats():
    """Step 2 of 2: Patch Model with the calibrated weight and the layers the stats file keeps dense."""
    g = Graph()
    g.add("Note", ["Step 2 of 2. Needs models/rettention/flux_calibration.safetensors, written by "
                   "rettention_flux_calibrate (step 1). Calibrate again and this workflow reads the new file."])
    unet, vae, guided, neg, latent = flux_inputs(g)
    stats = g.add("RettentionLoadStats", ["flux_calibration.safetensors"])
    schedule = g.add("RettentionSparsitySchedule", [0.25, 1.0, 5, "", "calibrated", 0.04])
    model = patch(g, unet, schedule=schedule, stats=stats)
    flux_sample(g, model, vae, guided, neg, latent, "rettention_flux_calibrated")
    g.dump("rettention_flux_with_stats")


def wan21():
    g = Graph()
    unet = g.add("UNETLoader", ["wan2.1_t2v_1.3B_fp16.safetensors", "default"])
    shifted = g.add("ModelSamplingSD3", [8.0], model=(unet, 0))
    clip = g.add("CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"])
    vae = g.add("VAELoader", ["wan_2.1_vae.safetensors"])
    pos = g.add("CLIPTextEncode", ["a cat walking along a beach at sunset, cinematic"], clip=(clip, 0))
    neg = g.add("CLIPTextEncode", ["blurry, low quality, static"], clip=(clip, 0))
    latent = g.add("EmptyHunyuanLatentVideo", [832, 480, 33, 1])
    model = patch(g, shifted, density=0.0625, mask="local3d")
    sampled = g.add("KSampler", [0, "fixed", 30, 6.0, "uni_pc", "simple", 1.0], model=(model, 0), positive=(pos, 0),
                    negative=(neg, 0), latent_image=(latent, 0))
    g.add("SaveImage", ["rettention_wan21"], images=(g.add("VAEDecode", [], samples=(sampled, 0), vae=(vae, 0)), 0))
    g.dump("rettention_wan21_t2v")


def wan22():
    g = Graph()
    high = g.add("UNETLoader", ["wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "default"])
    low = g.add("UNETLoader", ["wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "default"])
    clip = g.add("CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"])
    vae = g.add("VAELoader", ["wan_2.1_vae.safetensors"])
    pos = g.add("CLIPTextEncode", ["a paper boat drifting down a rainy street, macro shot"], clip=(clip, 0))
    neg = g.add("CLIPTextEncode", ["blurry, low quality, static"], clip=(clip, 0))
    latent = g.add("EmptyHunyuanLatentVideo", [1280, 704, 81, 1])
    high_model = patch(g, g.add("ModelSamplingSD3", [8.0], model=(high, 0)), mask="local3d",
                       title="Re-ttention Patch (high-noise expert)")
    low_model = patch(g, g.add("ModelSamplingSD3", [8.0], model=(low, 0)), mask="local3d",
                      title="Re-ttention Patch (low-noise expert)")
    first = g.add("KSamplerAdvanced", ["enable", 0, "fixed", 20, 3.5, "euler", "simple", 0, 10, "enable"],
                  title="KSampler: high-noise expert", model=(high_model, 0), positive=(pos, 0),
                  negative=(neg, 0), latent_image=(latent, 0))
    second = g.add("KSamplerAdvanced", ["disable", 0, "fixed", 20, 3.5, "euler", "simple", 10, 10000, "disable"],
                   title="KSampler: low-noise expert", model=(low_model, 0), positive=(pos, 0),
                   negative=(neg, 0), latent_image=(first, 0))
    g.add("SaveImage", ["rettention_wan22"], images=(g.add("VAEDecode", [], samples=(second, 0), vae=(vae, 0)), 0))
    g.dump("rettention_wan22_two_expert")


def pixart():
    g = Graph()
    unet = g.add("UNETLoader", ["PixArt-Sigma-XL-2-1024-MS.safetensors", "default"])
    clip = g.add("CLIPLoader", ["t5xxl_fp16.safetensors", "pixart", "default"])
    vae = g.add("VAELoader", ["sdxl_vae.safetensors"])
    pos = g.add("CLIPTextEncode", ["an astronaut riding a horse on the moon, detailed"], clip=(clip, 0))
    neg = g.add("CLIPTextEncode", [""], clip=(clip, 0))
    latent = g.add("EmptyLatentImage", [1024, 1024, 1])
    model = patch(g, unet, density=0.03125, mask="band")
    sampled = g.add("KSampler", [0, "fixed", 20, 4.5, "dpmpp_2m", "karras", 1.0], model=(model, 0),
                    positive=(pos, 0), negative=(neg, 0), latent_image=(latent, 0))
    g.add("SaveImage", ["rettention_pixart"], images=(g.add("VAEDecode", [], samples=(sampled, 0), vae=(vae, 0)), 0))
    g.dump("rettention_pixart_sigma_t2i")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=HERE, help="folder to write the workflows to (default: workflows/)")
    parser.add_argument("--no-thumbnails", action="store_true", help="the JSON files only (no Pillow needed)")
    args = parser.parse_args()
    OUT[0], THUMBNAILS[0] = args.out, not args.no_thumbnails
    flux()
    wan21()
    pixart()
    wan22()
    flux_calibrate()
    flux_with_stats()
