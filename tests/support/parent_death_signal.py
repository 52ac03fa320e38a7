"""Print this process's parent-death signal (prctl PR_GET_PDEATHSIG): what a launcher asked for."""

from __future__ import annotations

import ctypes

PR_GET_PDEATHSIG = 2


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    signal_number = ctypes.c_int(0)
    if libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(signal_number)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_GET_PDEATHSIG)")
    print(f"pdeathsig={signal_number.value}", flush=True)


if __name__ == "__main__":
    main()
