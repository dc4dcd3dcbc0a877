"""Worker for the kill -9 / resume tests of ``tests/trainer/test_reliability.py``.

One short, fully deterministic DSB training run: a tiny ``MLPForClassification`` on synthetic
long-tailed data, ``SemScaleTrainer`` on the CPU with one thread, checkpoints every 4 steps, the
pool changing every step and the class weights every 3rd (so some resumes land between two updates). At the end it writes the final class
weights, semantic scales, pool state and model weights to ``<result>`` (safetensors).

Two ways to run it:

- ``python tests/support/reliability_worker.py run OUTPUT_DIR RESULT [--kill-in-save STEP:PHASE]``: one run;
  resumes from the latest complete checkpoint of ``OUTPUT_DIR`` when there is one.
- ``python tests/support/reliability_worker.py serve``: imports torch/transformers ONCE, then reads one JSON
  command per line on stdin (``{"output_dir": ..., "result": ..., "kill_in_save": "STEP:PHASE"}``) and
  forks a fresh child process per command. Importing transformers costs ~13 s of CPU here, so the test
  pays it once instead of once per restart. Protocol lines on stdout (everything else goes to stderr):
  ``@@started PID``, ``@@step PID N`` (after every optimizer step), ``@@exited PID STATUS`` (a negative
  STATUS is the killing signal). ``"hold_at_end": true`` makes the child wait after its last optimizer step
  (before the final save) until it is killed: a test that kills it from outside at a random instant can
  then never find it already finished, however late the test reads the progress lines.

``--kill-in-save STEP:PHASE`` makes the run SIGKILL itself inside the checkpoint save of step STEP:

- ``after_semscale_state``: the pool/weights file is written, the model is not;
- ``before_trainer_state``: model, optimizer, scheduler and RNG state are written, ``trainer_state.json`` is not;
- ``mid_trainer_state``: ``trainer_state.json`` is half written;
- ``mid_semscale_state``: inside the atomic write of ``semscale_state.safetensors`` (temporary file
  written, not yet renamed);
- ``mid_rotation``: while ``save_total_limit`` deletes an older checkpoint (it is left half deleted).
"""

from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")

NUM_LABELS = 5
CLASS_COUNTS = [48, 24, 12, 6, 3]
INPUT_DIM = 12
HIDDEN_DIMS = (24, 16)
MAX_STEPS = 40
SAVE_STEPS = 4
BATCH_SIZE = 8
SEED = 1234

PHASES = ("after_semscale_state", "before_trainer_state", "mid_trainer_state", "mid_semscale_state", "mid_rotation")


def _say(line: str) -> None:
    """One protocol line on stdout, in a single write (atomic on a pipe)."""
    os.write(1, (line + "\n").encode())


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def make_dataset():
    import torch
    from datasets import Dataset

    g = torch.Generator().manual_seed(7)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(CLASS_COUNTS)])
    centres = torch.randn(NUM_LABELS, INPUT_DIM, generator=g) * 2.0
    spread = torch.linspace(0.3, 1.5, NUM_LABELS)[labels].unsqueeze(1)
    x = centres[labels] + spread * torch.randn(labels.numel(), INPUT_DIM, generator=g)
    return Dataset.from_dict({"pixel_values": x.tolist(), "labels": labels.tolist()})


def make_trainer(output_dir: str, trainer_cls=None, callbacks=(), dataset=None, model=None, **overrides):
    """The worker's model, data and settings as a ready ``SemScaleTrainer`` (also used in-process by the tests)."""
    from transformers import set_seed

    from hf_semscale import SemScaleConfig, SemScaleTrainer
    from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification

    set_seed(SEED)
    if model is None:
        model = MLPForClassification(
            MLPClassifierConfig(input_dim=INPUT_DIM, hidden_dims=HIDDEN_DIMS, num_labels=NUM_LABELS)
        )
    settings = dict(
        output_dir=output_dir,
        use_cpu=True,
        seed=SEED,
        max_steps=MAX_STEPS,
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=5e-3,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        save_total_limit=2,
        logging_steps=SAVE_STEPS,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        semscale_warmup_steps=3,
        semscale_update_interval=3,  # coprime to SAVE_STEPS: some resumes land between two updates
        semscale_fill_max_steps=3,
        semscale_pool_capacity=16,
    )
    settings.update(overrides)
    cls = trainer_cls or SemScaleTrainer
    return cls(
        model=model,
        args=SemScaleConfig(**settings),
        train_dataset=dataset if dataset is not None else make_dataset(),
        callbacks=list(callbacks),
    )


def run(output_dir: str, result: str, kill_in_save: str | None = None, hold_at_end: bool = False) -> None:
    """Train (resuming from the latest complete checkpoint if any) and write the final state to ``result``."""
    import time

    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    import hf_semscale.atomic as atomic_mod
    import hf_semscale.trainer as trainer_mod
    from hf_semscale import SemScaleTrainer
    from hf_semscale.dsb.pool import atomic_save_safetensors

    kill_step, phase = -1, None
    if kill_in_save:
        step_text, phase = kill_in_save.split(":")
        kill_step = int(step_text)
        if phase not in PHASES:
            raise ValueError(f"unknown kill phase {phase!r}; one of {PHASES}")

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _say(f"@@step {os.getpid()} {state.global_step}")
            while hold_at_end and state.global_step >= args.max_steps:
                time.sleep(1.0)  # until the test's SIGKILL

    class KillingTrainer(SemScaleTrainer):
        """SemScaleTrainer that SIGKILLs itself at one chosen point of one checkpoint save."""

        def _armed(self, which: str) -> bool:
            return phase == which and self.state.global_step == kill_step

        def _save_semscale_state(self, checkpoint_dir):
            if self._armed("mid_semscale_state"):
                real_replace = os.replace

                def replace_then_die(src, dst):  # the temporary file is complete; die before the rename
                    if str(dst).endswith(trainer_mod.STATE_FILENAME):
                        _die()
                    return real_replace(src, dst)

                atomic_mod.os.replace = replace_then_die
            super()._save_semscale_state(checkpoint_dir)
            if self._armed("after_semscale_state"):
                _die()

        def _save_rng_state(self, output_dir):
            super()._save_rng_state(output_dir)
            if self._armed("before_trainer_state"):
                _die()
            if self._armed("mid_trainer_state"):
                from transformers.trainer_callback import TrainerState

                def half_then_die(state, json_path):
                    import dataclasses

                    text = json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"
                    with open(json_path, "w", encoding="utf-8") as fh:
                        fh.write(text[: len(text) // 2])
                    _die()

                TrainerState.save_to_json = half_then_die
            if self._armed("mid_rotation"):
                import shutil

                def rmtree_half_then_die(path, *args, **kwargs):
                    names = sorted(os.listdir(path))  # delete the model first, keep trainer_state.json
                    for name in names:
                        if name.startswith("model"):
                            os.remove(os.path.join(path, name))
                    _die()

                shutil.rmtree = rmtree_half_then_die

    trainer = make_trainer(output_dir, trainer_cls=KillingTrainer, callbacks=[Progress()])
    resume = trainer_mod.latest_complete_checkpoint(output_dir)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    state = trainer.model.state_dict()
    tensors = {f"model.{k}": v for k, v in state.items()}
    tensors["class_weights"] = trainer.class_weights
    tensors["semantic_scales"] = trainer.semantic_scales
    tensors.update(trainer.pool.state_dict())
    atomic_save_safetensors(
        tensors, result, metadata={"stage": trainer.stage, "num_updates": str(trainer.balancer.num_updates)}
    )


def serve() -> None:
    """Fork one child per command line on stdin; report its pid, progress and exit status on stdout."""
    import torch

    torch.set_num_threads(1)
    import datasets  # noqa: F401

    import hf_semscale.modeling
    import hf_semscale.trainer  # noqa: F401  (the expensive imports, once)

    _say("@@ready")
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:  # child: train, then leave without running the parent's cleanup
            # Its prints (the Trainer's log dicts) go to stderr: a partial line flushed to stdout would glue
            # itself to the next protocol line, even the parent's @@exited after a SIGKILL, and hide it.
            sys.stdout = sys.stderr
            code = 0
            try:
                run(cmd["output_dir"], cmd["result"], cmd.get("kill_in_save"), bool(cmd.get("hold_at_end")))
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        _say(f"@@started {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"@@exited {pid} {os.waitstatus_to_exitcode(status)}")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "serve":
        serve()
    elif len(argv) >= 3 and argv[0] == "run":
        kill = argv[argv.index("--kill-in-save") + 1] if "--kill-in-save" in argv else None
        run(argv[1], argv[2], kill)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
