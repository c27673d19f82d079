"""The errors jmeta raises beyond ``ValueError`` / ``TypeError`` for bad arguments; the
command line prints each as one line."""


class RunLockedError(RuntimeError):
    """Another live process is writing the run folder."""


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinite loss or gradient and stopped; the message says at which
    step, in which metric, and which checkpoint was kept."""
