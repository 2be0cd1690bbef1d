"""What a person sees on the console: hf_sft's own lines at INFO, the libraries' at the Trainer's log level.

transformers' ``log_level`` defaults to ``passive``, which leaves transformers at its own default, warning; the
Trainer applies the same level to everything it logs. hf_sft keeps those semantics for the libraries, and
for its own logger (``hf_sft``) reads ``passive`` as INFO on the main process: the start block, one line
per eval started and done, and where the results went. An explicit ``--log_level warning`` (or error)
silences hf_sft's lines too; ``--log_level info`` makes transformers talkative as well, as it always did.
Replicas follow ``log_level_replica`` (warning), so a DDP run prints each line once.

Lines go out through ``tqdm.write``, which clears and redraws a live progress bar (the training bar) around
them instead of landing inside its redraw.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


class TqdmAwareHandler(logging.StreamHandler):
    """A stderr handler that writes around live tqdm bars (tqdm.write), so a line never splits a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def own_log_level(log_level: str, process_level: int, is_main: bool) -> int:
    """hf_sft's level: INFO on the main process when the recipe leaves log_level at passive, else the Trainer's."""
    return logging.INFO if log_level == "passive" and is_main else process_level


def setup_console_logging(own_level: int, library_level: int) -> None:
    """Root (and so every library that propagates) at ``library_level``; the ``hf_sft`` logger at ``own_level``."""
    import datasets
    import transformers

    handler = TqdmAwareHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    logging.basicConfig(level=library_level, handlers=[handler])
    logging.getLogger("hf_sft").setLevel(own_level)
    datasets.utils.logging.set_verbosity(min(library_level, logging.WARNING))
    transformers.utils.logging.set_verbosity(library_level)
    if own_level > logging.INFO:  # --log_level warning: warnings and the final table, no bars either
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def quiet_trainer(trainer) -> None:
    """Under ``--log_level warning`` the Trainer's own progress bar and printed metric dicts go too.

    Trainer always adds ProgressCallback (or PrinterCallback with disable_tqdm), whatever the log level;
    the metrics still reach log_history, the trackers and trainer_state.json.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if logging.getLogger("hf_sft").getEffectiveLevel() > logging.INFO:
        for callback in (ProgressCallback, PrinterCallback):
            trainer.remove_callback(callback)


def setup_training_logging(training_args) -> int:
    """The Trainer's log_level / log_level_replica for the libraries, hf_sft's own level as above; returns it."""
    library_level = training_args.get_process_log_level()
    own = own_log_level(training_args.log_level, library_level, training_args.should_log)
    setup_console_logging(own, library_level)
    return own
