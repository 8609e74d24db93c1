"""Check out the data version pinned by a git revision (a tag or commit), so a run reads exactly that data.

The ``.dvc`` file at the revision names the content hash; DVC serves it from the local cache or the remote.
The workspace copy is replaced atomically, so a failed fetch leaves the previous data in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_dir, atomic_file
from pipelines.core.errors import ShoprecError


def pull_pinned(root: str | Path, path: str, rev: str) -> dict[str, Any]:
    """Materialise DVC-tracked ``path`` (relative to the repo ``root``) as of git ``rev``; return its version."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    root = Path(root).resolve()
    try:
        fs = DVCFileSystem(str(root), rev=rev)
        info = fs.info(path) if fs.exists(path) else None
    except (DvcException, SCMError) as exc:
        raise ShoprecError(f"{root}: cannot read git revision {rev!r}: {exc}") from exc
    if info is None or "md5" not in info:
        raise ShoprecError(f"{path}: not tracked by DVC at git revision {rev!r}")
    target = root / path
    try:
        if info["type"] == "directory":
            with atomic_dir(target) as tmp:
                shutil.rmtree(tmp)
                fs.get(path, str(tmp), recursive=True)
        else:
            with atomic_file(target) as tmp:
                fs.get_file(path, str(tmp))
    except DvcException as exc:
        raise ShoprecError(f"{path}@{rev}: DVC could not fetch the data ({exc}); was it pushed to the remote?") from exc
    commit = fs.repo.scm.resolve_rev(rev)
    return {"rev": rev, "commit": commit, "path": path, "md5": info["md5"]}
