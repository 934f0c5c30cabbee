"""Command line: ``diffdistill train | sample | export | encode | ls | validate | eval | demo``.

    diffdistill train recipes/toy/teacher_gmm2d.yaml trainer.max_steps=200     # key=value overrides
    diffdistill sample runs/toy-teacher --steps 4                              # a run dir or an export dir
    diffdistill export runs/toy-teacher                                        # newest checkpoint -> export/
    diffdistill encode --pipeline models/sdxl-base --images data/captioned --out data/sdxl-latents
    diffdistill encode --pipeline models/wan2.1-t2v-1.3b --videos data/clips --out data/wan-latents
    diffdistill validate recipes/toy/teacher_gmm2d.yaml
    diffdistill eval --checkpoint runs/dmd2-fmnist-1step --features fmnist --n 10000   # FID/KID/PR, JSON
    diffdistill ls
    diffdistill demo runs/dmd2-fmnist-quick --port 7860                       # Gradio: student vs teacher

Multi-GPU: ``accelerate launch -m diffdistill.cli train RECIPE`` (accelerate's own launcher and config files).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import ConfigError, dump_yaml, load_yaml
from .inference.spec import SAMPLERS
from .models.registry import MODEL_KINDS, count_parameters, find_export, load_model, read_export_meta
from .train.recipe import ResolvedRun, build_networks, resolve

EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:        # the demo parses its own options (demos/gradio_sampler.py)
        return cmd_demo(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    if args.command in ("train", "validate") and not args.recipe:
        parser.error(f"{args.command} needs a recipe: diffdistill {args.command} RECIPE [key.sub=value ...] "
                     "(`diffdistill ls` lists the shipped recipes)")
    try:
        return args.func(args)
    except (ConfigError, ValueError, OSError) as err:     # FileNotFoundError, DamagedFileError, CheckpointError, ...
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.filename:
        text = f"{err.filename}: {err.strerror or text}"
    return " ".join(text.split())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffdistill", description="Few-step distillation of diffusion and flow models.")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a recipe (resumes from the newest checkpoint in its output_dir)")
    t.add_argument("recipe", nargs="?", help="a recipe YAML file (`diffdistill ls` lists the shipped ones)")
    t.add_argument("overrides", nargs="*", help="optional key.sub=value overrides, e.g. trainer.max_steps=100")
    t.add_argument("--quiet", action="store_true", help="no progress bar or loss lines (errors and the final line only)")
    t.add_argument("--log-every", type=int, default=None, metavar="N",
                   help="a loss line (and a metrics.jsonl row) every N steps (= trainer.log_every=N)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample an exported model (a run dir or its export/ dir)")
    s.add_argument("checkpoint")
    s.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own setting)")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--guidance", type=float, default=None, help="standard-form CFG scale (1 = none)")
    s.add_argument("--sampler", choices=SAMPLERS, default=None)
    s.add_argument("--eta", type=float, default=None,
                   help="tcd sampler: stochasticity in [0, 1] (0 = deterministic; default: the export's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="text models (SD1.5, SDXL): a prompt; repeat for several (samples cycle through them)")
    s.add_argument("--prompts-file", default=None, metavar="FILE", help="text models: one prompt per line")
    s.add_argument("--pipeline", default=None, metavar="FOLDER",
                   help="text models: the diffusers pipeline folder whose text encoders and VAE to use (default: "
                        "the teacher folder the run was trained from, recorded in the export)")
    s.add_argument("--off-schedule", action="store_true",
                   help="allow --steps / --sampler other than a distilled student's own (it was not trained for them)")
    s.add_argument("--stream", action="store_true",
                   help="causal video students: generate chunk by chunk, printing each chunk's time as it is ready")
    s.add_argument("--frames", type=int, default=None,
                   help="with --stream: latent frames to generate (default: the trained length; more rolls on)")
    s.add_argument("--ffe", type=int, default=None, metavar="STEPS",
                   help="causal students: first-frame enhancement, the first chunk on the student's STEPS-step "
                        "schedule and the rest on --steps (0: off; default: the export's)")
    s.add_argument("--out", default=None,
                   help="PNG path (default: <export dir>/samples-<sampler>-<steps>steps-seed<seed>.png, never "
                        "overwriting: -2, -3, ... are added); a JSON report is written next to it")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("export", help="export the newest checkpoint of a run (EMA weights if kept) to <run>/export")
    e.add_argument("run")
    e.set_defaults(func=cmd_export)

    lm = sub.add_parser("merge-lora", help="re-export a LoRA run's student with its adapters merged at --weight "
                                           "(e.g. a reward-feedback LoRA at 0.5)")
    lm.add_argument("run")
    lm.add_argument("--weight", type=float, required=True, help="0 = the base student, 1 = as trained")
    lm.add_argument("--out", required=True, help="the folder to write (an export)")
    lm.set_defaults(func=cmd_merge_lora)

    c = sub.add_parser("encode", help="captioned images or videos -> latents + prompt embeddings "
                                      "(data: {name: latents})")
    c.add_argument("--pipeline", required=True, help="a local diffusers pipeline folder (its VAE and text encoders)")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="images with metadata.jsonl or <stem>.txt captions (SD1.5 / SDXL)")
    source.add_argument("--videos", help="videos (GIF; MP4 etc. with the [video] extra) with metadata.jsonl or "
                                         "<stem>.txt captions (Wan)")
    c.add_argument("--out", required=True, help="the latents folder to write")
    c.add_argument("--resolution", type=int, default=None, help="square crop size in pixels (default: the UNet's)")
    c.add_argument("--frames", type=int, default=81, help="videos: frames kept from the start, 4k + 1 (Wan: 81)")
    c.add_argument("--height", type=int, default=480, help="videos: frame height in pixels (Wan 2.1: 480)")
    c.add_argument("--width", type=int, default=832, help="videos: frame width in pixels (Wan 2.1: 832)")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--shard-size", type=int, default=1000)
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--vae-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="SDXL's VAE overflows in float16; keep float32 unless it is a fixed VAE")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_encode)

    o = sub.add_parser("ode-pairs", help="teacher ODE trajectories at a student's times (data: {name: ode_pairs}) "
                                         "for the ode_regression initialisation of a causal student")
    o.add_argument("teacher", help="the teacher's export folder (or a run dir with export/)")
    o.add_argument("--times", type=float, nargs="+", required=True, help="the student's few-step times, noisy -> clean")
    o.add_argument("--n", type=int, default=1000, help="trajectories (class-balanced for class teachers)")
    o.add_argument("--guidance", type=float, default=None, help="teacher CFG, standard form (default: its export's)")
    o.add_argument("--steps-per-segment", type=int, default=12, help="Euler steps between consecutive times")
    o.add_argument("--batch-size", type=int, default=16)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--out", required=True, help="the folder to write")
    o.set_defaults(func=cmd_ode_pairs)

    v = sub.add_parser("validate", help="check a recipe and print its resolved config")
    v.add_argument("recipe", nargs="?", help="a recipe YAML file")
    v.add_argument("overrides", nargs="*", help="optional key.sub=value overrides")
    v.set_defaults(func=cmd_validate)

    sub.add_parser("demo", add_help=False, help="Gradio sampler: a student next to its teacher, timed "
                   "(`diffdistill demo --help`; needs the [demo] extra)")

    from .eval.evaluate import add_parsers as add_eval_parsers      # eval, eval ref
    add_eval_parsers(sub)

    ls = sub.add_parser("ls", help="list shipped recipes, methods, models and datasets")
    ls.set_defaults(func=cmd_ls)
    return p


def cmd_validate(args: argparse.Namespace) -> int:
    _, resolved = resolve(args.recipe, args.overrides)
    print(json.dumps(resolved, indent=2))
    print(f"OK: {args.recipe} is valid", file=sys.stderr)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from .data.encode import encode_folder

    from .data.encode import ClipSize

    clip = ClipSize(args.frames, args.height, args.width) if args.videos else None
    out = encode_folder(args.pipeline, args.videos or args.images, args.out, args.resolution, args.batch_size,
                        args.shard_size, args.device, args.vae_dtype, args.seed, clip)
    print(f"wrote {out} ({json.loads((out / 'meta.json').read_text())['count']} samples)")
    return 0


def cmd_ode_pairs(args: argparse.Namespace) -> int:
    from .inference.ode_pairs import write_ode_pairs
    from .inference.generate import export_spec

    directory = find_export(args.teacher)
    meta = read_export_meta(directory)
    if _is_text_model(meta):
        raise ValueError(f"{str(directory)!r} is text-conditioned; `ode-pairs` writes class-conditioned or "
                         "unconditional trajectories (prompted pairs are not supported yet)")
    teacher = load_model(directory).eval()
    spec = export_spec(directory, teacher)
    guidance = spec.guidance if args.guidance is None else args.guidance
    out = write_ode_pairs(teacher, args.out, args.n, list(args.times), guidance, args.steps_per_segment,
                          spec.num_classes, args.seed, args.batch_size,
                          info={"teacher": str(directory), "data": meta.get("run_config", {}).get("data")})
    print(f"wrote {out} ({args.n} trajectories at t = {list(args.times)}, CFG {guidance})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"trainer.log_every={args.log_every}"] if args.log_every else [])
    return _train(args.recipe, overrides, quiet=args.quiet)


def cmd_export(args: argparse.Namespace) -> int:
    """Export the newest checkpoint of a run (EMA weights when the run keeps an EMA) to <run>/export.

    It resumes the run with max_steps set to that checkpoint's step, so no step is taken and the trainer's normal
    end-of-run export runs: the same code path, metadata and preview as a finished run.
    """
    from .train.checkpoint import latest_checkpoint

    run_dir = Path(args.run)
    last = latest_checkpoint(run_dir)
    if last is None or not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} holds no complete checkpoint and config.yaml; pass the output_dir "
                                "of a `diffdistill train` run")
    step = json.loads((last / "trainer_state.json").read_text())["step"]
    # output_dir: the folder given here, also when the run was moved or copied since it was trained
    return _train(run_dir / "config.yaml", [f"trainer.max_steps={step}", f"output_dir={run_dir}"], write_config=False)


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from .models.registry import merge_lora

    out = merge_lora(args.run, args.weight, args.out)
    print(f"merged the LoRA of {args.run} at weight {args.weight} -> {out}")
    return 0


def _train(recipe: str | Path, overrides: list[str], write_config: bool = True, quiet: bool = False) -> int:
    from .train.checkpoint import latest_checkpoint, run_lock
    from .methods import method_class, method_groups
    from .train.recipe import check_resume_compatible, resolve_run
    from .train.trainer import make_accelerator, validate_trainer_config

    run = resolve_run(recipe, overrides)            # every section validated once, into typed sections
    run_dir = Path(run.output_dir)
    validate_trainer_config(run.trainer, method_groups(run.method))
    accelerator = make_accelerator(run.trainer, run_dir, method_class(run.method).partial_updates)
    # one writer per run folder: held by the job's main process until the run ends (checkpoint.run_lock)
    with run_lock(accelerator, run_dir):
        if latest_checkpoint(run_dir) is not None and (run_dir / "config.yaml").is_file():
            check_resume_compatible(load_yaml(run_dir / "config.yaml"), run.resolved)
        return _train_locked(run, run_dir, accelerator, write_config, quiet)


def _train_locked(run: ResolvedRun, run_dir: Path, accelerator: Any, write_config: bool, quiet: bool) -> int:
    from accelerate.utils import set_seed

    from .data import open_stream
    from .methods import build_method
    from .train.checkpoint import latest_checkpoint
    from .train.trainer import NonFiniteLossError, fit

    resolved = run.resolved
    # a resumed run rewrites config.yaml (its new max_steps) only once it has trained: a resume that fails (damaged
    # checkpoints, a NaN) leaves the run folder as it was
    write_now = write_config and latest_checkpoint(run_dir) is None
    if accelerator.is_main_process and write_now:
        dump_yaml(resolved, run_dir / "config.yaml")
    set_seed(run.trainer.seed)      # the same initial weights on every rank and in every rerun of this recipe
    models = build_networks(run)
    model = models["model"]
    method = build_method(run.method, models, run.data.config.num_classes)
    data = open_stream(run.data, run.trainer.batch_size, run.trainer.seed, accelerator.process_index,
                       accelerator.num_processes)
    processes = (f", {accelerator.num_processes} processes ({accelerator.distributed_type.value})"
                 if accelerator.num_processes > 1 else "")
    accelerator.print(f"{type(method).__name__} on {run.model.name} ({count_parameters(model):,} parameters), "
                      f"{run.trainer.max_steps} steps{processes} -> {run_dir}")
    started = time.perf_counter()
    try:
        result = fit(method, data, run.trainer, run_dir, accelerator, resolved, _start_lineage(run), quiet)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if accelerator.is_main_process and write_config and not write_now:
        dump_yaml(resolved, run_dir / "config.yaml")
    if result.first_step == result.step:
        accelerator.print(f"nothing to train: the run is already at step {result.step} (its max_steps); exported "
                          f"again to {result.export_dir}")
    else:
        accelerator.print(f"done: steps {result.first_step + 1}-{result.step} in {time.perf_counter() - started:.1f} s"
                          f" (the run's training so far: {result.train_seconds:.0f} s); exported to "
                          f"{result.export_dir}; samples in {run_dir / 'samples'}")
    return 0


def _start_lineage(run: ResolvedRun) -> list[dict[str, Any]]:
    """Earlier stages the trained network's starting point already cost: the training of one of our exports it
    continues (``student: {pretrained: <export>}``: a further stage of a shipped student), and the teacher
    trajectories an ODE regression trains on (``data: {name: ode_pairs}``: their generation time). The teacher's
    (``model:``) and the critic's training are not the student's cost, as in the benchmark tables."""
    from .train.lineage import stages_of_export, stages_of_ode_pairs

    stages = stages_of_ode_pairs(run.data.config.path) if run.data.name == "ode_pairs" else []
    spec = run.run.role_sections().get("student")
    if spec and spec.get("pretrained") and Path(spec["pretrained"]).exists():       # not a hub id
        stages += stages_of_export(find_export(spec["pretrained"]))   # a run directory means its export/, as it loads
    return stages


def cmd_sample(args: argparse.Namespace) -> int:
    from .inference.generate import generate, user_spec
    from .data import class_names, trained_mixture
    from .metrics.distribution import toy_report
    from .metrics.video import video_report
    from .visual import save_samples, save_video

    if args.n <= 0:
        raise ValueError(f"--n must be > 0, got {args.n}")
    directory = find_export(args.checkpoint)
    meta = read_export_meta(directory)
    prompts = _read_prompts(args.prompt, args.prompts_file)
    text_model = _is_text_model(meta)
    if prompts and not text_model:
        raise ValueError(f"{str(directory)!r} is not a text-conditioned model; --prompt / --prompts-file apply to "
                         "SD1.5 / SDXL exports only")
    if text_model and not prompts:
        raise ValueError(f"{str(directory)!r} is a text-conditioned model: pass --prompt TEXT (repeatable) or "
                         "--prompts-file FILE (one prompt per line)")
    model = load_model(directory).eval()
    plan = user_spec(directory, model, args.steps, args.sampler, args.guidance, args.off_schedule, args.eta, args.ffe)
    text = uncond = conditioner = None
    if text_model:
        conditioner = _prompt_conditioner(args.pipeline, meta, directory)
        text, uncond = conditioner.conds_many([prompts[i % len(prompts)] for i in range(args.n)], model.data_shape)
    streamed: dict[str, Any] = {}
    if args.stream or args.frames:
        samples, labels, seconds, streamed = _stream(model, plan, args)
    else:
        samples, labels, seconds = generate(model, plan, args.n, seed=args.seed, progress=False, text=text,
                                            uncond=uncond)
    if conditioner is not None:       # latents -> pixels through the pipeline's VAE
        samples = conditioner.decode(samples)
    default = directory / f"samples-{plan.sampler}-{plan.steps}steps-seed{args.seed}.png"
    out = Path(args.out) if args.out else _free_path(default)
    data_name = meta.get("run_config", {}).get("data", {}).get("name")
    save_samples(samples, out, title=f"{plan.sampler}, {plan.steps} steps", labels=labels,
                 class_names=class_names(data_name, plan.num_classes))
    report = {"samples": args.n, "steps": plan.steps, "sampler": plan.sampler, "guidance": plan.guidance,
              "nfe": plan.nfe, "seconds": round(seconds, 4), "png": str(out)}
    if plan.first_chunk_times:                    # first-frame enhancement: the first chunk's own step count
        report["first_chunk_steps"] = plan.first_chunk_steps
    report.update(streamed)
    if samples.dim() == 5:                        # video: animated clips and, on B2 clips, the video metrics
        report["video"] = [str(p) for p in save_video(samples, out.with_suffix(".gif"), labels=labels,
                                                      class_names=class_names(data_name, plan.num_classes))]
        report.update(video_report(samples, labels, data_name))
    if prompts:
        report["prompts"] = prompts
    mixture = trained_mixture(meta)
    if mixture is not None:
        report.update(toy_report(samples, mixture))
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def _stream(model: Any, plan: Any, args: argparse.Namespace) -> tuple[torch.Tensor, Any, float, dict[str, Any]]:
    """`sample --stream`: one JSON line per chunk as it is generated; the latency and rate go into the report."""
    from .inference.generate import class_labels, stream

    if args.frames is not None and not args.stream:
        raise ValueError("--frames applies to --stream (causal students); drop it or add --stream")
    labels = class_labels(args.n, plan.num_classes)
    chunks, times = [], []
    for k, chunk, seconds in stream(model, plan, args.n, args.seed, labels, args.frames):
        chunks.append(chunk)
        times.append(seconds)
        print(json.dumps({"chunk": k, "frames": chunk.shape[1] * (k + 1), "seconds": round(seconds, 4)}), flush=True)
    samples = torch.cat(chunks, dim=1)
    frames = samples.shape[0] * samples.shape[1]
    return samples, labels, times[-1], {"streamed": True, "chunks": len(chunks), "first_chunk_seconds":
                                        round(times[0], 4), "frames_per_second": round(frames / times[-1], 2)}


def _free_path(path: Path) -> Path:
    """``path``, or ``stem-2``, ``stem-3``, ... beside it: a second sample never replaces the first."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    out = [p.strip() for p in prompts if p.strip()]
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {prompts_file!r} does not exist; give a text file with one "
                                    "prompt per line")
        out += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not out:
            raise ValueError(f"--prompts-file {prompts_file!r} holds no prompts (one per line, blank lines skipped)")
    return out


def _is_text_model(meta: dict[str, Any]) -> bool:
    """UNets and Wan transformers without class tokens are prompted (SD1.5 / SDXL / Wan); with class tokens (B1's
    UNet, B2's Wan) they take class labels."""
    model = meta.get("model", {})
    classes = int(meta.get("sampling", {}).get("num_classes", model.get("num_classes", 0)) or 0)
    return model.get("kind") in ("wan", "unet") and classes == 0


def _prompt_conditioner(pipeline: str | None, meta: dict[str, Any], directory: Path):
    """The text encoders and VAE of ``pipeline``, or of the teacher folder the export's run was trained from."""
    from .inference.side_by_side import PromptConditioner

    folder = pipeline or meta.get("run_config", {}).get("model", {}).get("pretrained")
    if not folder:
        raise ValueError(f"{str(directory)!r} records no pipeline folder; pass --pipeline FOLDER (the diffusers "
                         "SD / SDXL / Wan folder whose text encoders and VAE the model was trained with)")
    return PromptConditioner(folder, torch.device("cpu"))


def cmd_demo(argv: list[str]) -> int:
    """Run demos/gradio_sampler.py, found next to the package (a source checkout) or in the working directory.

    The demo lives outside the package because gradio is imported only in demos/ (tests/test_imports.py), so it is loaded by
    path rather than imported."""
    import importlib.util

    roots = dict.fromkeys([Path(__file__).resolve().parents[1], Path.cwd()])
    script = next((r / "demos" / "gradio_sampler.py" for r in roots if (r / "demos" / "gradio_sampler.py").is_file()),
                  None)
    if script is None:
        print("error: demos/gradio_sampler.py not found; run from a source checkout of diffdistill "
              "(pip install -e '.[demo]')", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec = importlib.util.spec_from_file_location("diffdistill_gradio_sampler", script)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo.main(argv)


def _recipe_roots() -> list[Path]:
    roots = [Path.cwd() / "recipes", Path(__file__).resolve().parents[1] / "recipes"]
    return list(dict.fromkeys(r for r in roots if r.is_dir()))


def recipe_summary(path: Path) -> str:
    """The first sentence of a recipe's opening comment (which may run over several lines), whole."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith(("Launch:", "Then:", "Expect:")):
            break
        lines.append(text)
    words = " ".join(lines)
    end = words.find(". ")
    return words[:end + 1] if end >= 0 else words


def cmd_ls(args: argparse.Namespace) -> int:
    from .data import DATASETS
    from .methods import METHODS

    import textwrap

    print("recipes:")
    for root in _recipe_roots():
        for path in sorted(root.rglob("*.yaml")):
            print(f"  {path.relative_to(root.parent)}")
            about = recipe_summary(path)
            if about:
                print(textwrap.fill(about, width=110, initial_indent="      ", subsequent_indent="      "))
    print("methods:")
    for name, (_, _, about) in METHODS.items():
        print(f"  {name}: {about}")
    print("models: " + ", ".join(MODEL_KINDS))
    print("datasets: " + ", ".join(DATASETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
