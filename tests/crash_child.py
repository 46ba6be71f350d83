"""A BiFTA run in its own process, for tests/test_crash.py.

    python tests/crash_child.py DATASET WEIGHTS [--workers N] [--batch B]
        [--sleep S] [--create PATHS_JSON] [--database-uri URI]
    python tests/crash_child.py --serve

Runs ``run_bifta`` (method "bifta", the tiny test model with the seeded
``WEIGHTS``, ``skip_existing=True``) on the dataset ``DATASET``, creating it
first from a JSON list of image paths with ``--create`` when it does not
exist. Prints ``BATCH`` (flushed) after each written batch, then sleeps
``--sleep`` seconds there, so a test can signal it mid-run; prints
``RESULT <json>`` at the end. The database comes from the environment
(``FIFTYONE_DATABASE_URI``), as for any FiftyOne process, or from
``--database-uri``.

``--serve`` imports FiftyOne, torch and open_clip once, then forks one
process per run: each request is a JSON line ``{"args": [...], "env":
{...}, "out": path, "err": path}`` on stdin; it answers ``STARTED <pid>``
and, when that process ends, ``EXIT <pid> <code>`` (``-N``: killed by
signal N). The runs are still separate processes (killed, signalled and
with their own DataLoader workers); only the seconds of imports are shared,
which matters on a loaded machine.
"""

import argparse
import json
import os
import sys
import time

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS_DIR, os.path.dirname(TESTS_DIR)]

CLASSES = ["cat", "astronaut", "coffee", "rocket"]
DESCRIPTIONS = {c: [f"a photo of a {c}.", f"a {c}, up close."] for c in CLASSES}
SETTINGS = dict(num_candidates=4, max_views=4)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("weights")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--create")
    parser.add_argument("--database-uri")
    args = parser.parse_args(argv)

    import fiftyone as fo

    if args.database_uri:  # read when FiftyOne first connects
        fo.config.database_uri = args.database_uri
    from tiny_model import TINY_CONFIG_PATH, TINY_MODEL_NAME
    from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions
    from bifta_plugin.sdk.run import run_bifta

    if args.create and not fo.dataset_exists(args.dataset):
        with open(args.create) as f:
            paths = json.load(f)
        dataset = fo.Dataset(args.dataset, persistent=True)
        dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    dataset = fo.load_dataset(args.dataset)

    def progress(_pb):
        print("BATCH", flush=True)
        time.sleep(args.sleep)

    result = run_bifta(
        dataset,
        CLASSES,
        DESCRIPTIONS,
        encoder=EncoderSpec(
            TINY_MODEL_NAME, args.weights, device="cpu", cache_dir=False,
            model_config=TINY_CONFIG_PATH,
        ),
        runtime=RunOptions(batch_size=args.batch, num_workers=args.workers, skip_existing=True),
        output=OutputSpec("bifta"),
        progress=progress,
        **SETTINGS,
    )
    print("RESULT " + json.dumps(result.to_dict(), default=str), flush=True)


def serve():
    import fiftyone  # noqa: F401 (imported once, before the forks)
    import open_clip  # noqa: F401
    import torch  # noqa: F401
    import bifta_plugin.sdk.run  # noqa: F401

    print("READY", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child_main(request)
        print(f"STARTED {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(f"EXIT {pid} {code}", flush=True)


def _child_main(request):
    """In the forked process: run ``main`` with the request's environment
    and output files; never returns."""
    code = 1
    try:
        os.environ.update(request.get("env") or {})
        for fd, path in ((1, request["out"]), (2, request["err"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdin = open(os.devnull)
        main(request["args"])
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main()
