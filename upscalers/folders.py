"""Which folders hold a family's model files: `<models>/<Family>` (any case), or the folder a launch flag
(`--esrgan-models-path`, `--gfpgan-models-path`, ...) names instead."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path


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
