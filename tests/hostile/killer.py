"""Run the bertbatch CLI and SIGKILL this process at a named commit point of a directory job.

    python killer.py POINT N ARGS...   (POINT: temp-written | published | recorded | before-success | swapped)

KILLER_SIGNAL=SIGSTOP in the environment stops the process there instead (the test sends SIGCONT).

The points are the job protocol's own functions (sink.publish, job.Job.record, sink.mark_success, and
sink._exchange, the swap that puts a staged --overwrite in place),
wrapped here from outside: the library has no test-only code path.
"""

import os
import signal
import sys


def main():
    point, nth, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    from bertbatch import job, sink

    calls = {"n": 0}
    signum = signal.Signals[os.environ.get("KILLER_SIGNAL", "SIGKILL")]

    def die_on_nth():
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signum)

    def wrap(owner, name, before):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            if before:
                die_on_nth()
            result = original(*a, **k)
            if not before:
                die_on_nth()
            return result

        setattr(owner, name, wrapper)

    if point == "temp-written":
        wrap(sink, "publish", before=True)
    elif point == "published":
        wrap(sink, "publish", before=False)
    elif point == "recorded":
        wrap(job.Job, "record", before=False)
    elif point == "before-success":
        wrap(sink, "mark_success", before=True)
    elif point == "swapped":
        wrap(sink, "_exchange", before=False)
    else:
        raise SystemExit(f"unknown point {point}")
    from bertbatch.cli import cli

    cli(args, prog_name="bertbatch")


if __name__ == "__main__":
    main()
