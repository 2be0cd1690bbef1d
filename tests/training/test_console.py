"""hf_sft's own level: INFO by default on the main process, the Trainer's log_level when one is given."""

from __future__ import annotations

import logging

from hf_sft.training.console import own_log_level


def test_passive_means_info_for_hf_sft_on_the_main_process_only():
    assert own_log_level("passive", logging.WARNING, is_main=True) == logging.INFO
    assert own_log_level("passive", logging.WARNING, is_main=False) == logging.WARNING  # replicas stay quiet
    assert own_log_level("warning", logging.WARNING, is_main=True) == logging.WARNING
    assert own_log_level("debug", logging.DEBUG, is_main=True) == logging.DEBUG
