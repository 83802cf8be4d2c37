"""Which folders hold a family's model files: `<models>/<Family>` (any case), or the folder a launch flag
(`--esrgan-models-path`, `--gfpgan-models-path`, ...) names instead; and the walk of the model listings
(checkpoints, LoRA, embeddings, VAE, upscalers, face restorers) with A1111's option `list_hidden_files`."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


def family_folders(models_dir: Path, families: Iterable[str], moved: Mapping[str, Path]) -> list[Path]:
    """Folders directly under `models_dir` named like one of `families` (ignoring case), in name order,
    except the families in `moved`, whose given folder is used instead (when it exists)."""
    wanted = {f.casefold(): f for f in families}
    found: list[Path] = []
    if models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            family = wanted.get(folder.name.casefold())
            if family is not None and family not in moved and folder.is_dir():
                found.append(folder)
    found += [Path(moved[f]) for f in wanted.values() if f in moved and Path(moved[f]).is_dir()]
    return found


def model_walk(root: Path, list_hidden: bool = True, key: Callable[[str], Any] | None = None,
               ) -> Iterator[tuple[Path, list[str], list[str]]]:
    """The walk of a model listing, as A1111's `modules/util.py` `walk_files`: every folder under `root`
    (following links) as (folder, its subfolders, its files), both lists sorted by `key`; a caller may empty
    the subfolder list to not go further. With `list_hidden` off (option `list_hidden_files`) the folders
    below `root` whose names start with '.' are left out with all they hold. Files whose own names start
    with '.' are listed either way (walk_files looks at the folders' names only). Unlike A1111, which
    looks at the whole path, the folders above `root` do not count."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted((d for d in dirnames if list_hidden or not d.startswith(".")), key=key)
        yield Path(dirpath), dirnames, sorted(filenames, key=key)


def model_files(root: Path, suffixes: tuple[str, ...], list_hidden: bool = True,
                key: Callable[[str], Any] | None = None) -> list[Path]:
    """The files under `root` (model_walk) whose names end with one of `suffixes` (any case), that are
    files (a broken link is not)."""
    return [folder / fn for folder, _, files in model_walk(root, list_hidden, key) for fn in files
            if fn.lower().endswith(suffixes) and (folder / fn).is_file()]


def always() -> bool:
    """The default of a listing's `list_hidden` reader: A1111's default of `list_hidden_files` (on)."""
    return True
