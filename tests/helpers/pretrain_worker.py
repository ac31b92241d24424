"""Runs train/pretrain.py's main() in this process (1 process, or one torchrun worker) with the given arguments.

SISC_TEST_SIGTERM="<rank>:<step>" makes that rank send itself SIGTERM when it logs that step (deterministic, unlike
a signal from outside). The process leaves with main()'s exit status without waiting for gloo's teardown (which
can hang on CPU after the work is done)."""

import os
import signal
import sys

from sisc_train.tasks.pretraining import main


def signal_at_step(rank: int, step: int) -> None:
    from accelerate import Accelerator

    original = Accelerator.log

    def log(self, values, step=None, **kwargs):
        original(self, values, step=step, **kwargs)
        if step == wanted and self.process_index == rank:
            os.kill(os.getpid(), signal.SIGTERM)

    wanted = step
    Accelerator.log = log


if __name__ == "__main__":
    import faulthandler

    faulthandler.dump_traceback_later(150, exit=True)  # a hung worker prints where it hangs, then exits
    if os.environ.get("SISC_TEST_SIGTERM"):
        signal_at_step(*map(int, os.environ["SISC_TEST_SIGTERM"].split(":")))
    code = 0
    try:
        main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
