"""`sd-env train`: the tutorial's LoRA fine-tuning, on a local model and a local dataset.

Runs diffusers' `examples/text_to_image/train_text_to_image_lora.py` from the
managed (patched) checkout with the tutorial's arguments (section 3.3), in the
environment `sd-env run` gives (ACCELERATE_TORCH_DEVICE, ulimit -n), then draws
two pictures: the validation prompt without and with the new LoRA, and the
loss curve. Any script argument given after `--` replaces the tutorial's.

The model is the manifest's pinned one (`sd-env model fetch`), every file checked against
the model lock before the run, unless `--model` names another; the data likewise
(`--data`, else a pinned [dataset]). An image folder is checked before the run (every
image named by metadata.jsonl and decoding). The run leaves OUTPUT/sd-env-run.json
(runrecord.py): what made this LoRA.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from sd_env.core import runrecord, state
from sd_env.core.hubcache import Snapshot, hub_cache
from sd_env.core.hublock import LockedRepo
from sd_env.core.manifest import Manifest
from sd_env.errors import InputError, StepError
from sd_env.report import progress
from sd_env.system import probe
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target import envs, multidevice, trainenv
from sd_env.target.installed import Installed, installed
from sd_env.verify import precision, readiness
from sd_env.workflows import devices, models

# The tutorial's command line (section 3.3.1), in its order; values are strings, None for a switch.
TUTORIAL: list[tuple[str, str | None]] = [
    ("--mixed_precision", "no"), ("--caption_column", "text"), ("--resolution", "512"), ("--random_flip", None),
    ("--train_batch_size", "1"), ("--num_train_epochs", "10"), ("--checkpointing_steps", "500"),
    ("--learning_rate", "1e-04"), ("--lr_scheduler", "constant"), ("--lr_warmup_steps", "0"), ("--seed", "42"),
    ("--validation_prompt", "cute dragon creature"),
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class Options:
    model: str | None  # a local diffusers model folder (or a Hub id, when the Hub is reachable); None: the pinned one
    data: Path | None  # None: the manifest's pinned [dataset]
    output: Path
    device: str | None = None
    devices: str | None = None  # --devices: "0,1" or "all" (devices.py), one process each
    emulate: bool = False  # on sd-env's emulated tpu (emulation.py) instead of the card
    script: Path | None = None
    pictures: bool = True
    inference_steps: int = 30  # for the pictures (the tutorial's section 2.2 uses 30)
    # The script's own validation: this many images of 30 steps after each epoch and at the end
    # (None: the script's 4; 0: none, the pictures still draw the prompt).
    validation_images: int | None = None
    settings: dict[str, str] = field(default_factory=dict)  # sd-env flags: script flag -> value
    extra: list[str] = field(default_factory=list)  # after `--`: replace the tutorial's flags


@dataclass(frozen=True)
class Outcome:
    weights: Path
    compare: Path | None
    loss_curve: Path | None
    steps: int
    note: str = ""  # how far apart the with/without renders are
    record: Path | None = None  # OUTPUT/sd-env-run.json


def dataset_kind(folder: Path) -> str:
    """"imagefolder" (images + metadata.jsonl), "saved" (Dataset.save_to_disk) or "repo" (data files
    of a dataset repository, e.g. a downloaded Hub snapshot of lambdalabs/pokemon-blip-captions)."""
    if not folder.is_dir():
        raise InputError(f"--data {folder}: not a folder", "give a folder of images with metadata.jsonl")
    if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
        return "saved"
    files = [p for p in folder.rglob("*") if p.is_file()]
    if any(p.name == METADATA for p in files):
        return "imagefolder"
    if any(p.suffix in (".parquet", ".arrow") for p in files):
        return "repo"
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        raise InputError(f"--data {folder}: {len(images)} images but no {METADATA} with their captions",
                         f'write {folder / METADATA}: one line per image, e.g. '
                         f'{{"file_name": "{images[0].relative_to(folder)}", "text": "a caption"}}')
    raise InputError(f"--data {folder}: neither an image folder with {METADATA} nor a saved dataset",
                     "see README: Training on your own images")


def merged_args(defaults: list[tuple[str, str | None]], extra: list[str]) -> list[str]:
    """The defaults as argv, minus every flag that `extra` names, then `extra` (flags spelled with
    underscores, as the script's argparse wants: --max-train-steps -> --max_train_steps)."""
    extra = ["--" + a[2:].split("=", 1)[0].replace("-", "_") + a[2:][len(a[2:].split("=", 1)[0]):]
             if a.startswith("--") else a for a in extra]
    named = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    argv: list[str] = []
    for flag, value in defaults:
        if flag in named:
            continue
        argv += [flag] if value is None else [flag, value]
    return argv + extra


def find_script(paths: Paths, explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise InputError(f"--script {explicit}: no such file", "give the path of train_text_to_image_lora.py")
        return explicit.resolve()
    script, problem = readiness.training_script(paths)
    if problem is not None:
        raise problem
    return script


def check(man: Manifest, paths: Paths, script: Path | None, model: str | None, data: Path | None) -> str:
    """`train --check`: what train would start from; the error naming what it lacks otherwise."""
    said = [f"ready to train: {find_script(paths, script)}"]
    if model:
        said.append(f"model {_model(model)}")
    elif man.model is not None:  # not fetched is no reason not to train: --model DIR still works
        try:
            folder, repo = models.pinned(man, "model", hashed=False)
            said.append(f"the pinned {repo.label} in {folder} (sizes checked; sha256 when train starts)")
        except InputError as exc:
            said.append(f"--model DIR needed ({exc.message.split(': ', 1)[-1]}; {exc.hint})")
    if data is not None:
        said.append(f"data {data.resolve()} ({dataset_kind(data)})")
    return ", ".join(said)


def _model(value: str) -> str:
    path = Path(value).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise InputError(f"--model {value}: no model_index.json", "give a diffusers model folder "
                             "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
        return str(path.resolve())
    if value.count("/") == 1 and not value.startswith((".", "/", "~")):
        progress(f"--model {value}: not a folder here; the script will ask the Hugging Face Hub for it")
        return value
    raise InputError(f"--model {value}: no such folder", "give a local diffusers model folder")


def inputs(man: Manifest, paths: Paths, opts: Options) -> tuple[str, LockedRepo | None, Path, LockedRepo | None]:
    """The model and the data: what was given, else the manifest's pinned ones, checked by sha256."""
    if opts.model:
        model, model_repo = _model(opts.model), None
    elif man.model is not None:
        folder, model_repo = models.pinned(man, "model")
        model = str(folder)
    else:
        both = " and --data DIR" if opts.data is None and man.dataset is None else ""
        raise InputError(f"train needs --model DIR{both}: {man.path.name} pins no [model]",
                         "pass --model DIR (a diffusers model folder), or add a [model] to the manifest and run "
                         "`sd-env model lock` and `sd-env model fetch`")
    if opts.data is not None:
        return model, model_repo, opts.data.resolve(), None
    if man.dataset is None:
        raise InputError("train needs --data DIR (images + metadata.jsonl)",
                         f"pass --data DIR, or pin a [dataset] in {man.path.name} and `sd-env model fetch` it")
    _folder, data_repo = models.pinned(man, "dataset")
    view = Snapshot(hub_cache(), data_repo).plain_view(
        paths.cache / "datasets" / f"{data_repo.repo.replace('/', '--')}-{data_repo.revision[:12]}")
    progress(f"the pinned {data_repo.label} as plain files (links to its checked blobs): {view}")
    return model, model_repo, view, data_repo


def run(man: Manifest, paths: Paths, runner: Runner, python: Path, opts: Options,
        inv: envs.Inventory | None = None) -> Outcome:
    """The training run and its record; `inv` saves a probe when the caller already read the target."""
    inv = inv or envs.inventory(runner, python)
    target, chosen = devices.target(man, paths, runner, python, inv, opts.device, opts.devices, opts.emulate)
    model, model_repo, data_dir, data_repo = inputs(man, paths, opts)
    script = find_script(paths, opts.script)
    for note in target.notes:
        progress(note)
    mixed = opts.settings.get("--mixed_precision", "no")
    if mixed == "fp16" and target.device == "cpu":
        raise InputError("--mixed-precision fp16 needs the SC7 card: on the CPU the VAE fails "
                         "(torch 2.1 has no Half conv2d there)", "train with --mixed-precision no on the CPU")
    output = opts.output.resolve()
    settings, prompt = script_settings(opts)
    caption = _arg(merged_args(list(settings.items()), opts.extra), "--caption_column") or "text"
    data_flag, data = _dataset(runner, python, data_dir, output, caption)
    defaults = [("--pretrained_model_name_or_path", model), (data_flag, data), *settings.items(),
                ("--output_dir", str(output))]
    argv = [str(python), str(script), *merged_args(defaults, opts.extra)]
    progress(f"hashing the training data as it is read: {data_dir}")
    data_facts = runrecord.inputs_of(data_dir, data_repo, kind=dataset_kind(data_dir))
    model_facts = runrecord.inputs_of(Path(model), model_repo) if Path(model).is_dir() else {"source": "hub",
                                                                                            "repo": model}
    command = argv
    if chosen is not None and chosen.processes > 1:
        progress(devices.batch_note(chosen, int(_arg(argv, "--train_batch_size") or 16),
                                    int(_arg(argv, "--gradient_accumulation_steps") or 1),
                                    _arg(argv, "--learning_rate") or "1e-4", "--scale_lr" in argv))
        progress(devices.BUSY)
        command = [*multidevice.launcher(python, chosen.processes, mixed), *argv[1:]]
    progress("training: " + shlex.join(["python", *command[1:]]))
    if _arg(argv, "--validation_prompt"):
        count = _arg(argv, "--num_validation_images") or "4"
        progress(f"the script draws {count} validation images of 30 steps after each epoch and at the end "
                 "(often most of a short run): --validation-images N draws fewer, 0 none")
    watch = paths.cache / f"train-{os.getpid()}.precision.jsonl"  # not in work/: an install empties that
    watch.parent.mkdir(parents=True, exist_ok=True)
    watch.unlink(missing_ok=True)
    env = {**target.env, **precision.watch_env(watch, target.env.get("PYTHONPATH")), "SD_ENV_PRECISION_FORWARDS": "20"}
    if model_repo is not None or Path(model).is_dir():  # every input is local: no Hub call can stall the run
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    started, clock = state.utc_now(), time.monotonic()
    code = runner.attached(command, env=env, preexec=lambda: trainenv.apply_nofile(target.nofile))
    finished, seconds = state.utc_now(), time.monotonic() - clock
    if code != 0:
        raise StepError(f"the training script exited with {code} (its output is above)",
                        "the log has the full command line; the script's own error is the last lines above")
    weights = sorted(output.glob("pytorch_lora_weights.*"))
    if not weights:
        raise StepError(f"the training script wrote no pytorch_lora_weights.* into {output}")
    seen = precision.read(watch)
    watch.unlink(missing_ok=True)
    logged = probe.run(runner, python, probe.script("lora_weights.py"), [str(output)], timeout=600)
    losses = [float(x) for x in (logged.data or {}).get("losses", [])]
    versions = {name: ", ".join(got.versions) for name, got in target_versions(inv).items() if got.versions}
    # Several processes each add what they saw to the watch: the measured devices are all ranks' devices.
    device = {"asked": ",".join(chosen.names) if chosen else target.device, "processes": len(chosen.names) if chosen
              else 1, "emulated": opts.emulate, "torch_tpu": versions.get("torch-tpu"),
              "measured": {"loss": sorted(seen.loss_devices), "trained": sorted(seen.trained_devices)}}
    record = runrecord.build(runrecord.environment(man, paths, versions), model_facts, data_facts, script, argv[2:],
                             started, finished, seconds, output, device,
                             {"requested": mixed, "measured": precision.summary(mixed, seen), **seen.as_dict()},
                             losses, weights[0])
    written = runrecord.write(output, record)
    progress(f"run record: {written} (final loss {losses[-1] if losses else 'not logged'})")
    if not opts.pictures:
        return Outcome(weights[0], None, None, 0, record=written)
    prompt = _arg(argv, "--validation_prompt") or prompt
    seed = _arg(argv, "--seed") or "42"
    progress(f"rendering \"{prompt}\" without and with the LoRA (seed {seed}), and the loss curve")
    got = probe.run(runner, python, probe.script("lora_pictures.py"),
                    ["--model", model, "--lora", str(output), "--prompt", prompt, "--seed", seed,
                     "--steps", str(opts.inference_steps), "--device", target.device, "--out", str(output)],
                    timeout=3600, env=target.env)
    if not got.ok or got.data is None:
        raise StepError(f"the LoRA was trained ({weights[0]}), but drawing the pictures failed: "
                        f"{got.problem or (got.data or {}).get('error')}\n{got.stderr_tail}")
    return Outcome(weights[0], Path(got.data["compare"]), Path(got.data["loss_curve"]), got.data["steps"],
                   got.data.get("note", ""), written)


def target_versions(inv: envs.Inventory) -> dict[str, Installed]:
    return installed(inv, list(runrecord.PACKAGES))


def script_settings(opts: Options) -> tuple[dict[str, str | None], str]:
    """The tutorial's script flags with sd-env's own applied, and the prompt for the pictures.

    No validation (0 images) drops --validation_prompt: v0.20.0's per-epoch validation cannot
    log zero images (np.stack of an empty list), and without a prompt it draws none."""
    settings = dict(TUTORIAL)
    settings.update(opts.settings)
    prompt = settings.get("--validation_prompt") or "cute dragon creature"
    if opts.validation_images is not None:
        if opts.validation_images < 0:
            raise InputError(f"--validation-images {opts.validation_images}", "give 0 (no validation) or more")
        settings["--num_validation_images"] = str(opts.validation_images)
        if opts.validation_images == 0:
            settings.pop("--validation_prompt", None)
    return settings, prompt


def _arg(argv: list[str], flag: str) -> str | None:
    """The last value given for `flag` (as `--flag value` or `--flag=value`)."""
    found = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif a.startswith(flag + "="):
            found = a.split("=", 1)[1]
    return found


def _dataset(runner: Runner, python: Path, data: Path, output: Path, caption: str) -> tuple[str, str]:
    """The script's flag for the dataset: an image folder as --dataset_name fails in v0.20.0
    (`--caption_column' value 'text' needs to be one of: image`), so it is --train_data_dir."""
    kind = dataset_kind(data)
    if kind == "imagefolder":
        progress(f"checking the image folder {data}: metadata.jsonl names every image, every image decodes")
        checked = probe.run(runner, python, probe.script("data_check.py"), [
            str(data), "--caption-column", caption, "--suffixes", ",".join(sorted(IMAGE_SUFFIXES))], timeout=3600)
        if not checked.ok or checked.data is None:
            found = checked.data or {}
            raise InputError(f"--data {data}: {found.get('error') or checked.problem}",
                             "fix or remove that file (and its metadata.jsonl line), then train again")
        progress(f"dataset: image folder, {checked.data['images']} images with captions -> --train_data_dir {data}")
        return "--train_data_dir", str(data)
    if kind == "repo":
        progress(f"dataset: data files of a dataset repository -> --dataset_name {data}")
        return "--dataset_name", str(data)
    exported = output / "dataset"
    progress(f"dataset: a save_to_disk folder, which the script cannot load; exporting it as parquet to {exported}")
    got = probe.run(runner, python, probe.script("dataset_export.py"), [str(data), str(exported)], timeout=3600)
    if not got.ok or got.data is None:
        raise StepError(f"could not export {data} as parquet: {got.problem or (got.data or {}).get('error')}",
                        "save the dataset with Dataset.to_parquet(DIR/data/train.parquet) and pass --data DIR")
    progress(f"exported {got.data['rows']} rows ({', '.join(got.data['columns'])}) -> --dataset_name {exported}")
    return "--dataset_name", str(exported)


def summary(outcome: Outcome) -> str:
    lines = [f"LoRA weights: {outcome.weights}"]
    if outcome.record is not None:
        lines.append(f"run record: {outcome.record}")
    if outcome.compare is not None:
        lines.append(f"without | with the LoRA: {outcome.compare}" + (f"\n  {outcome.note}" if outcome.note else ""))
        lines.append(f"loss curve ({outcome.steps} steps): {outcome.loss_curve}")
    return "\n".join(lines)
