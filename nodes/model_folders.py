"""models/rettention: the folder of stats files, registered with ComfyUI's folder_paths, and loading them."""
from __future__ import annotations

import os

from ..rettention.calibration import CalibrationData, StatsFileError, load_stats_file

FOLDER = "rettention"
NONE = "none"


def stats_folder() -> str:
    """models/rettention (registered with folder_paths, merged with a user's own entry)."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[FOLDER]
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | {".safetensors"})
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], {".safetensors"})
    return folder_paths.get_folder_paths(FOLDER)[0]


def stats_files() -> list[str]:
    """The choices of a stats_file widget: ``none`` and the files in models/rettention."""
    import folder_paths

    stats_folder()
    return [NONE, *sorted(folder_paths.get_filename_list(FOLDER))]


def load_stats(name: str, input_name: str) -> CalibrationData:
    """The stats file ``name`` of models/rettention; a ValueError naming ``input_name`` if it cannot be used."""
    import folder_paths

    stats_folder()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ValueError(f"{input_name}: stats file {name!r} not found in models/rettention")
    try:
        return load_stats_file(path)
    except StatsFileError as error:
        raise ValueError(f"{input_name}: {error}") from None


def stats_fingerprint(name: str) -> tuple:
    """What changes when the stats file ``name`` is written again (its size and modification time), so
    that ComfyUI runs the nodes that read it again instead of reusing their cached output."""
    import folder_paths

    if not name or name == NONE:
        return (NONE,)
    stats_folder()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None or not os.path.isfile(path):
        return (name, None)
    info = os.stat(path)
    return (name, info.st_size, info.st_mtime_ns)
