"""The SIGKILL drills of drill_reliability.py: `kill-9-registration` and `kill-9-training`.

A worker registering dogs is killed mid-save and the gallery reopened; a tiny training run is killed while
it writes a checkpoint and resumed (both described in drill_reliability.py's docstring). Separate from the
app drills because these fork or spawn their own processes and check files on disk, not HTTP answers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from drill_app import DOGS, ROOT, dog_photos


def drill_kill_registration(work: Path, rounds: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from model_pkg import ArcFaceEmbedderModel
    from model_pkg.gallery_store.store import PhotoGallery

    embedder = ArcFaceEmbedderModel.from_pretrained(ROOT / "models" / "arcface-embedder").float().eval()
    gallery_dir, confirmed_file = work / "gallery-kill", work / "confirmed.jsonl"
    dogs = [[str(p) for p in photos] for photos in dog_photos(30, 2, skip=60)]
    PhotoGallery(gallery_dir, embedder)  # identity computed once here, before any fork
    from model_pkg.gallery import GalleryIndex

    rng = random.Random(seed)
    failures = lost = mid_save = 0
    for r in range(rounds):
        saving_r, saving_w = os.pipe()  # the worker says when a save starts, so the kill can land inside it
        pid = os.fork()
        if pid == 0:  # the worker: register until killed, writing down what the gallery confirmed
            try:
                os.close(saving_r)
                save = GalleryIndex.save

                def announced_save(index, directory, _save=save, _fd=saving_w):
                    os.write(_fd, b"s")
                    return _save(index, directory)

                GalleryIndex.save = announced_save  # type: ignore[method-assign]
                gallery = PhotoGallery(gallery_dir, embedder)
                for i in range(10_000):
                    name = f"k{r}-{i}"
                    count = gallery.register(name, dogs[(r + i) % len(dogs)])
                    with open(confirmed_file, "a") as fh:
                        fh.write(json.dumps({"name": name, "photos": count}) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
            finally:
                os._exit(0)
        os.close(saving_w)
        # Every other round a random moment of the registration loop; otherwise 0-20 ms into the 1st-3rd save
        # (writing the faiss index, the vectors, the checksummed metadata, fsyncs, the folder swap).
        if r % 2:
            time.sleep(rng.uniform(0.3, 2.5))
        else:
            for _ in range(rng.randint(1, 3)):
                os.read(saving_r, 1)
            time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(saving_r)
        mid_save += any(gallery_dir.glob(".index.tmp-*"))
        try:
            reopened = PhotoGallery(gallery_dir, embedder)  # the restart: loads and verifies checksums
        except Exception as err:  # a gallery that no longer loads is the worst outcome: count it, go on
            print(f"round {r}: the gallery did not load: {type(err).__name__}: {err}", flush=True)
            failures += 1
            continue
        counts = reopened.photo_counts()
        confirmed = [json.loads(line) for line in confirmed_file.read_text().splitlines()] if confirmed_file.exists() else []
        lost += sum(counts.get(c["name"], 0) < c["photos"] for c in confirmed)
        missing = [m["photo"] for m in reopened.index.metadata if not (gallery_dir / m["photo"]).is_file()]
        failures += bool(missing)
    confirmed = confirmed_file.read_text().splitlines() if confirmed_file.exists() else []
    indexed = {m["photo"] for m in PhotoGallery(gallery_dir, embedder).index.metadata}
    orphans = sum(1 for p in (gallery_dir / "photos").rglob("*.jpg") if str(p.relative_to(gallery_dir)) not in indexed)
    return {
        "drill": "kill-9-registration",
        "tries": rounds,
        "failures": failures,
        "data_lost": lost,
        "detail": (
            f"{len(confirmed)} registrations confirmed across {rounds} kills, {mid_save} kills left an interrupted save "
            f"behind; {orphans} photo files of unconfirmed registrations remain unindexed (not data loss)"
        ),
    }


def _train(out: Path, logs: Path, kill_during_checkpoint: random.Random | None = None) -> int | None:
    """`train/run.py` on a tiny pair-matcher config. With `kill_during_checkpoint`, it is killed with SIGKILL a
    random 0-300 ms after a new checkpoint folder appears (HF Trainer writes trainer_state.json last); -> the exit
    code, or None when killed."""
    dogs = out.parent / "dogs"
    if not dogs.exists():
        for dog in sorted(os.listdir(DOGS), key=int)[:12]:
            shutil.copytree(DOGS / dog, dogs / dog)
    model = json.dumps({"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "hidden_size": 32})
    sets = [f"data_dir={dogs}", f"output_dir={out}", "splits_file=null", f"model={model}", "frozen_steps=20"]
    sets += ["finetune_steps=40", "eval_steps=4", "val_pairs=12", "batch_size=4", "logging_steps=4", "save_total_limit=3"]
    cmd = [
        sys.executable,
        str(ROOT / "train" / "run.py"),
        "--task",
        "pair",
        "--config",
        str(ROOT / "train/configs/pair_matcher.yaml"),
    ]
    for s in sets:
        cmd += ["--set", s]
    with open(logs / f"train-{out.name}.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if kill_during_checkpoint is None:
            return proc.wait()
        checkpoints = out / "checkpoints"
        seen = {p.name for p in checkpoints.glob("checkpoint-*")} if checkpoints.exists() else set()
        while proc.poll() is None:
            new = [p for p in checkpoints.glob("checkpoint-*") if p.name not in seen] if checkpoints.exists() else []
            if new:
                time.sleep(kill_during_checkpoint.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.01)
        return proc.returncode


def drill_kill_training(work: Path, logs: Path, seed: int) -> dict:
    from safetensors.torch import load_file

    reference, killed = work / "train-reference", work / "train-killed"
    _train(reference, logs)
    rng = random.Random(seed)
    kills = attempts = 0
    while not (killed / "summary.json").exists() and attempts < 12:
        attempts += 1
        if _train(killed, logs, kill_during_checkpoint=rng if attempts <= 6 else None) is None:
            kills += 1
    a, b = load_file(reference / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    thr_a = json.loads((reference / "model" / "config.json").read_text())["threshold"]
    thr_b = json.loads((killed / "model" / "config.json").read_text())["threshold"]
    same = diff <= 1e-4 and abs(thr_a - thr_b) <= 1e-4
    return {
        "drill": "kill-9-training",
        "tries": kills,
        "failures": int(not (killed / "summary.json").exists()),
        "data_lost": 0 if same else 1,
        "detail": (
            f"{kills} kills, finished after {attempts} starts; largest weight difference to the uninterrupted run "
            f"{diff:.2e}, thresholds {thr_a:.4f} / {thr_b:.4f} (tolerance 1e-4)"
        ),
    }
