"""Shared by the probes: print main()'s result as the last stdout line, as JSON.

On an exception the traceback goes to stderr and the JSON says what failed and
where (the innermost probe line, e.g. the vae.encode call for fp16 on a CPU),
so the caller always has a result to read. The probes import this as a
sibling module: Python puts a script's own folder first on sys.path.
"""

import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def report(main, *args):
    try:
        result = main(*args)
    except Exception as exc:
        traceback.print_exc()
        ours = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve().parent == HERE]
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}: {ours[-1].line}" if ours else None
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "where": where}))
        sys.exit(1)
    print(json.dumps(result))
