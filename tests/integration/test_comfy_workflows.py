"""The example workflows validate against the node definitions ComfyUI reports.

    COMFYUI_PATH=/work/comfyui python -m pytest -q tests
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
# combo inputs that list the user's model files (not present here): the value is not checked against the list
FILE_INPUTS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "stats_file"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
CONTROL = {"fixed", "increment", "decrement", "randomize"}
FRONT_END_ONLY = {"Note", "MarkdownNote"}          # node types the front end defines (no server class)


def _inputs(cls):
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind = value[0]
            options = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            yield section, name, kind, options


def _kind_name(kind):
    return kind if isinstance(kind, str) else getattr(kind, "value", None) or "COMBO"


@pytest.fixture(scope="module")
def built_workflows(tmp_path_factory):
    """The workflows as workflows/build_workflows.py writes them now."""
    out = tmp_path_factory.mktemp("workflows")
    subprocess.run([sys.executable, os.path.join(REPO, "workflows", "build_workflows.py"), "--out", str(out),
                    "--no-thumbnails"], check=True)
    return str(out)


def test_one_folder_of_workflows():
    assert len(WORKFLOWS) == 6
    for path in WORKFLOWS:                            # the templates browser's thumbnail beside each
        assert os.path.getsize(path[: -len(".json")] + ".jpg") > 2000, path
    assert not os.path.exists(os.path.join(REPO, "example_workflows"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_validates(comfy_env, built_workflows, path):
    mappings = comfy_env["nodes"].NODE_CLASS_MAPPINGS
    with open(path) as f:
        workflow = json.load(f)
    by_id = {node["id"]: node for node in workflow["nodes"]}
    assert {"RettentionPatchModel", "RettentionCalibrateStats"} & {n["type"] for n in workflow["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert by_id[src]["outputs"][src_slot]["type"] == kind
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]]
    for i, a in enumerate(boxes):                      # no node hides another's widgets
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    for node in workflow["nodes"]:
        if node["type"] in FRONT_END_ONLY:
            continue
        assert node["type"] in mappings, f"{node['type']} is not a registered node"
        cls = mappings[node["type"]]
        linked = {i["name"]: i for i in node["inputs"] if i.get("link") is not None}
        values = list(node["widgets_values"])
        for section, name, kind, options in _inputs(cls):
            kind_name = _kind_name(kind)
            is_combo = isinstance(kind, (list, tuple)) or kind_name == "COMBO"
            if name in linked:
                if not is_combo:
                    assert linked[name]["type"] == kind_name, (node["type"], name)
                continue
            if not is_combo and kind_name not in WIDGET_TYPES:
                assert section == "optional", f"{node['type']}: required input {name} is not connected"
                continue
            assert values, f"{node['type']}: no widget value for {name}"
            value = values.pop(0)
            if is_combo:
                choices = list(kind) if isinstance(kind, (list, tuple)) else options.get("options", [])
                if name not in FILE_INPUTS:
                    assert value in choices, f"{node['type']}.{name}: {value!r} not in {choices}"
            elif kind_name in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (node["type"], name)
                assert options.get("min", value) <= value <= options.get("max", value), (node["type"], name, value)
                if options.get("control_after_generate"):
                    assert values and values.pop(0) in CONTROL
            elif kind_name == "BOOLEAN":
                assert isinstance(value, bool), (node["type"], name)
            else:
                assert isinstance(value, str), (node["type"], name)
        assert not values, f"{node['type']}: extra widget values {values}"
    built = os.path.join(built_workflows, os.path.basename(path))
    with open(built) as f:
        assert json.load(f) == workflow, "workflows/ is out of date: run python workflows/build_workflows.py"
