"""A stand-in for the trainer's row group, for the executor tests: picklable, resumable, idempotent.

``StepUnit`` runs ``steps`` steps of a hash chain, checkpointing after each (like an epoch), then
turns the final state into a float matrix product (so that the result file is numeric work done in
whatever process ran the unit) and writes it atomically. It can be slowed down (``delay_s``) to be
killed mid-way, or made to fail at a given step (a bug: RuntimeError; bad input: the project's
DataError). Side files record what happened, for the tests:
``calls.log`` (one line per call: the step it started from), ``steps.log`` (one line per step
computed), ``pid`` (the process running it) and ``env.json`` (its ``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdepth._files import atomic_write_bytes, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class StepUnit:
    key: str
    label: str
    root: str
    steps: int = 3
    seed: int = 0
    delay_s: float = 0.0
    fail_at: int | None = None
    refuse_at: int | None = None  # raise the project's DataError (bad input) at this step

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.key

    @property
    def result_path(self) -> Path:
        return self.folder / "result.bin"

    def is_done(self) -> bool:
        return self.result_path.is_file()

    def _log(self, name: str, line: str) -> None:
        with (self.folder / name).open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def __call__(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.is_done():
            return hashlib.sha256(self.result_path.read_bytes()).hexdigest()
        ckpt = self.folder / "checkpoint.json"
        if ckpt.is_file():
            saved = json.loads(ckpt.read_text())
            step, state = saved["step"], saved["state"]
        else:
            step, state = 0, hashlib.sha256(f"{self.key}/{self.seed}".encode()).hexdigest()
        self._log("calls.log", f"start {step}")
        atomic_write_text(self.folder / "pid", str(os.getpid()))
        atomic_write_json(self.folder / "env.json", {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")})
        while step < self.steps:
            time.sleep(self.delay_s)
            if self.fail_at == step:
                raise RuntimeError(f"unit {self.key} fails at step {step} on purpose")
            if self.refuse_at == step:
                from clipdepth.data.common import DataError

                raise DataError(f"{self.folder / 'frame.png'}: truncated PNG file (unit {self.key}, step {step})")
            state = hashlib.sha256(f"{state}/{step}".encode()).hexdigest()
            step += 1
            atomic_write_json(ckpt, {"step": step, "state": state})
            self._log("steps.log", f"step {step}")
        rng = np.random.default_rng(int(state[:16], 16))
        a = rng.standard_normal((48, 48))
        data = (a @ a.T).tobytes()
        atomic_write_bytes(self.result_path, data)
        return hashlib.sha256(data).hexdigest()
