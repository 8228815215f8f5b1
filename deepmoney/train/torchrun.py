"""`python -m deepmoney.train.torchrun ARGS`: torchrun that ends with the exit code of the rank that failed first.

torchrun itself exits 1 whatever its ranks did, so a launcher could only tell a user error from
a crash by reading their messages. This wrapper runs the same `torch.distributed.run` and, when a
rank fails, prints torchrun's failure summary and exits with that rank's code — 2 for a user
error, 128 + N for a rank killed by signal N — which is what `deepmoney.errors.is_retryable` and
a PyTorchJob's `restartPolicy: ExitCode` decide on.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Run torchrun with `argv`; 0, or the first failed rank's exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        sys.stderr.write(exc.format_msg() + "\n")
        code = failure.exitcode
        return 128 - code if code < 0 else code  # -9 (SIGKILL) -> 137, as a shell reports it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
