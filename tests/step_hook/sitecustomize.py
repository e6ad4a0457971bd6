"""Put on PYTHONPATH by tests/test_distributed.py: one chosen rank of an ``attnsae train`` run does something at a
chosen step, deterministically (no test polls a file and races the run):

* ``ATTNSAE_TEST_DO=stop``: after writing the checkpoint of step ``ATTNSAE_TEST_AT_STEP`` it stops itself (SIGSTOP),
  so the test can kill it exactly there;
* ``pause``: it stops itself when that step is done, whether or not a checkpoint came with it;
* ``raise``: at that step it raises an AttnsaeError, as a full disk or a bad batch would;
* ``other-out``: it trains into ``--out``'s sibling ``{out}-elsewhere``, as a process whose folder is not shared.

Only the process whose ``RANK`` is ``ATTNSAE_TEST_RANK`` is touched (one process: ``RANK=0``, which
``conftest.step_hook`` sets); every other process imports nothing here.
"""

import os

if os.environ.get("ATTNSAE_TEST_DO") and os.environ.get("RANK") == os.environ.get("ATTNSAE_TEST_RANK"):
    import dataclasses
    import signal

    from attnsae.errors import AttnsaeError
    from attnsae.training import trainer

    _do, _at = os.environ["ATTNSAE_TEST_DO"], int(os.environ.get("ATTNSAE_TEST_AT_STEP", "0"))
    _checkpoint, _train, _step = trainer.Checkpointer.__call__, trainer._train, trainer.step

    _done = []  # once: a process let go on (SIGCONT) runs on

    def _after_checkpoint(self, state, *args, **kwargs):
        _checkpoint(self, state, *args, **kwargs)
        if state.step >= _at and not _done:
            _done.append(state.step)
            if _do == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            if _do == "raise":
                raise AttnsaeError(f"injected failure at step {state.step}")

    def _pausing_step(cfg, specs, saes, opts, firing, state, *args, **kwargs):
        records = _step(cfg, specs, saes, opts, firing, state, *args, **kwargs)
        if state.step + 1 >= _at and not _done:
            _done.append(state.step + 1)
            os.kill(os.getpid(), signal.SIGSTOP)
        return records

    def _elsewhere(cfg, *args, **kwargs):
        return _train(dataclasses.replace(cfg, out=cfg.out + "-elsewhere"), *args, **kwargs)

    trainer.Checkpointer.__call__ = _after_checkpoint
    if _do == "other-out":
        trainer._train = _elsewhere
    if _do == "pause":
        trainer.step = _pausing_step
