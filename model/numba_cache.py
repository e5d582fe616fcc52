"""Where Numba caches the compiled kernels; imported first by `model`."""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from pathlib import Path


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def _let_numba_cache() -> None:
    """Numba caches compiled kernels in __pycache__ beside their source, else in ~/.cache; with
    neither writable (a read-only install run by an account without a home) it refuses to
    compile them at all ("cannot cache function ...: no locator available"). Point it at a
    private folder in the temp directory then. Runs before any module here imports Numba."""
    if "NUMBA_CACHE_DIR" in os.environ or _writable_dir(Path(__file__).parent / "__pycache__"):
        return
    # As Numba (its appdirs) finds it: an empty XDG_CACHE_HOME means the working directory.
    user_cache = Path(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache")))
    if _writable_dir(user_cache / "numba"):
        return
    # Numba's cache holds pickles it loads back: only a folder this account alone owns will do.
    shared = Path(tempfile.gettempdir()) / f"w2v-numba-cache-{os.getuid()}"
    try:
        shared.mkdir(mode=0o700, exist_ok=True)
        st = shared.lstat()
        private = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
    except OSError:
        private = False
    if private:
        os.environ["NUMBA_CACHE_DIR"] = str(shared)
        return
    # Someone else's folder, or not a folder: a fresh one for this process, removed at exit.
    own = tempfile.mkdtemp(prefix="w2v-numba-cache-")
    atexit.register(shutil.rmtree, own, ignore_errors=True)
    os.environ["NUMBA_CACHE_DIR"] = own


_let_numba_cache()
