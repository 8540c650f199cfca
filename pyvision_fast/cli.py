"""The ``pvf`` command (also ``python -m pyvision_fast``): info, models, bench, train, eval, extract,
export, engine-info, edit-video."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path


def info_dict() -> dict:
    """What this installation has: versions, compiled modules, usable backends, CUDA architectures."""
    import torch

    import pyvision_fast
    from pyvision_fast import _backend, _cpu_isa, _ext
    from pyvision_fast import triton as pvf_triton

    cpu_mod = _ext.cpu_module()
    cuda_mod = _ext.cuda_module()
    count, message = _ext.cuda_device_status()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    backends = {}
    for name in _backend.BACKENDS:
        backends[name] = [d.type for d in devices if _backend.available(name, d)]
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "pyvision_fast": pyvision_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "compiled": {
            "_C": {"loaded": cpu_mod is not None, "error": _ext.load_error("_C"),
                   "openmp": bool(getattr(cpu_mod, "has_openmp", False)),
                   "cpu_capability": getattr(cpu_mod, "cpu_capability", None),
                   "cpu_capabilities_built": sorted(_cpu_isa.built_capabilities(), key=list(_cpu_isa.MODULES).index),
                   "cpu_capability_forced": os.environ.get(_cpu_isa.ENV) or None},
            "_C_cuda": {"loaded": cuda_mod is not None, "error": _ext.load_error("_C_cuda"),
                        "cuda_archs": getattr(cuda_mod, "compiled_archs", None),
                        "cuda_runtime": getattr(cuda_mod, "runtime_version", None),
                        "devices": count, "device_status": message},
        },
        "torch_cuda_available": torch.cuda.is_available(),
        "triton_interpreter": pvf_triton.available(torch.device("cpu")),
        "backends": backends,
        "forced_backend": _backend.forced_backend(),
        "gpu_preferred": _backend.preferred(),
        "gpu_candidates": _backend.candidates(),
    }


def _print_info(args) -> int:
    info = info_dict()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c, g = info["compiled"]["_C"], info["compiled"]["_C_cuda"]
    print(f"pyvision_fast {info['pyvision_fast']}  (python {info['python']}, torch {info['torch']}, "
          f"triton {info['triton'] or 'not installed'})")
    print(f"_C       {'built' if c['loaded'] else 'NOT loaded: ' + str(c['error'])}"
          f"{' (OpenMP)' if c['openmp'] else ''}")
    if c["loaded"]:
        how = f"forced by PVF_CPU_CAPABILITY={c['cpu_capability_forced']}" if c["cpu_capability_forced"] else \
            "the best this CPU runs"
        print(f"CPU ISA  {c['cpu_capability']} ({how}; built: {', '.join(c['cpu_capabilities_built'])})")
    if g["loaded"]:
        runtime = g["cuda_runtime"]
        devices = (f"devices: {g['devices']}" if g["devices"] else
                   f"no usable GPU here, CPU only (the CUDA runtime says: {g['device_status']})")
        print(f"_C_cuda  built for sm {g['cuda_archs']}, CUDA runtime {runtime // 1000}.{runtime % 1000 // 10} "
              f"(static); {devices}")
    else:
        print(f"_C_cuda  NOT loaded: {g['error']}")
    for name, devices in info["backends"].items():
        if devices:
            status = "usable on " + ", ".join(devices)
        elif name == "triton" and info["triton"]:
            status = "no GPU: interpreter only (TRITON_INTERPRET=1 runs the Triton kernels on the CPU, slowly)"
        elif name == "cuda":
            status = "no GPU here"
        else:
            status = "not usable here"
        print(f"backend {name:<9} {status}")
    if info["gpu_preferred"]:
        print("GPU defaults  " + ", ".join(f"{op}: {key}" for op, key in sorted(info["gpu_preferred"].items())))
    if info["gpu_candidates"]:
        print("GPU candidates (PVF_CANDIDATES)  "
              + ", ".join(f"{op}: {key}" for op, key in sorted(info["gpu_candidates"].items())))
    if info["forced_backend"]:
        print(f"PVF_BACKEND forces '{info['forced_backend']}'")
    return 0


def _bench(args) -> int:
    """Runs the benchmark suite of a source checkout (``python -m benchmarks``)."""
    root = Path(args.root) if args.root else Path.cwd()
    if not (root / "benchmarks" / "__main__.py").exists():
        print("pvf bench: no benchmarks/ here; run it from a pyvision_fast checkout or pass --root", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.rest], cwd=root)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must look like 2x3x224x224, got {text!r}") from exc


def _registry_export_args(args) -> dict:
    """create_model arguments for ``pvf export NAME``: the ones a ``pvf train`` checkpoint records about its model
    (model_args, num_classes, img_size), overridden by ``--model-arg``; a checkpoint of another model is an
    error."""
    from pyvision_fast.models import model_accepts
    from pyvision_fast.train.checkpoint import read_model_identity
    from pyvision_fast.train.config import parse_pairs

    model_args = {}
    if args.checkpoint:
        identity = read_model_identity(args.checkpoint)
        if identity:
            if identity["model"] != args.model:
                raise ValueError(f"{args.checkpoint} holds a {identity['model']!r}, not a {args.model!r}")
            model_args.update(identity["model_args"])
            if identity["num_classes"] is not None:
                model_args.setdefault("num_classes", identity["num_classes"])
            if identity.get("img_size") is not None and model_accepts(args.model, "img_size"):
                model_args.setdefault("img_size", identity["img_size"])  # the size the recipe trained at
    model_args.update(parse_pairs(args.model_arg, "--model-arg"))
    return model_args


def _export(args) -> int:
    import torch

    from pyvision_fast.export import build_engine, export_model
    from pyvision_fast.export.models import export_module

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    options = dict(dynamic_batch=not args.static_batch, precision=precision, simplify=args.simplify,
                   calib_dir=args.calib,
                   calib_method=args.calib_method, calib_limit=args.calib_limit, calib_eval_dir=args.calib_eval)
    module_name, _, attr = args.model.partition(":")
    if args.preprocess:
        from pyvision_fast.train.config import parse_pairs

        options["preprocess_config"] = parse_pairs(args.preprocess, "--preprocess")
    if attr:
        if args.checkpoint or args.model_arg:
            raise ValueError("--checkpoint/--model-arg apply to registry models (pvf models), not to "
                             "package.module:factory")
        if not args.input:
            raise ValueError("a package.module:factory model needs --input SHAPE")
        sys.path.insert(0, str(Path.cwd()))
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load {args.model} ({exc})") from exc
        model = factory() if not isinstance(factory, torch.nn.Module) else factory
        torch.manual_seed(args.seed)
        inputs = tuple(torch.rand(shape) for shape in args.input)
        report = export_module(model, inputs, args.output, **options)
    else:
        from pyvision_fast.models import is_model

        if not is_model(args.model):
            raise ValueError(f"{args.model!r} is neither a registered model (pvf models) nor "
                             "package.module:factory")
        if args.input and len(args.input) != 1:
            raise ValueError("a registry model takes one --input SHAPE")
        report = export_model(args.model, args.output, checkpoint=args.checkpoint,
                              model_args=_registry_export_args(args),
                              input_shape=args.input[0] if args.input else None, seed=args.seed, **options)
    print(report)
    if args.engine:
        import onnx

        graph_inputs = onnx.load(str(args.output)).graph.input
        shapes = [tuple(d.dim_value or 1 for d in i.type.tensor_type.shape.dim) for i in graph_inputs]
        names = [i.name for i in graph_inputs]
        max_shapes = {n: (args.max_batch, *s[1:]) for n, s in zip(names, shapes)}
        min_shapes = {n: (1, *s[1:]) for n, s in zip(names, shapes)}
        opt_shapes = {n: (min(args.opt_batch, args.max_batch), *s[1:]) for n, s in zip(names, shapes)}
        path = build_engine(args.output, args.engine, fp16=args.fp16 or args.int8, int8=args.int8,
                            workspace=args.workspace << 20, min_shapes=min_shapes, opt_shapes=opt_shapes,
                            max_shapes=max_shapes)
        print(f"TensorRT engine: {path} (metadata: {path.name}.json)")
    return 0


def _engine_info(args) -> int:
    from pyvision_fast.export import read_engine_metadata

    print(json.dumps(read_engine_metadata(args.engine), indent=2))
    return 0


def model_parameter_counts(pattern=None) -> dict[str, int]:
    """Registry name -> parameter count of the model built with its default arguments, one at a time on the meta
    device (no memory, no initialisation; a model that cannot be built there is built on the CPU)."""
    import torch

    from pyvision_fast.models import count_parameters, create_model, list_models

    counts = {}
    for name in list_models(pattern):
        try:
            with torch.device("meta"):
                counts[name] = count_parameters(create_model(name))
        except (RuntimeError, NotImplementedError, ValueError, TypeError):
            # initialisation that reads values (timm's trunc_normal_ on meta tensors, tables built from data)
            # cannot run on meta: the count is the same on the CPU, only slower
            counts[name] = count_parameters(create_model(name))
    return counts


def _models(args) -> int:
    counts = model_parameter_counts(args.pattern)
    if args.json:
        print(json.dumps(counts, indent=2))
    elif not counts:
        print(f"pvf models: no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    else:
        width = max(len(n) for n in counts)
        for name, n in counts.items():
            print(f"{name:<{width}}  {n / 1e6:9.2f}M")
    return 0


def _train(args) -> int:
    from pyvision_fast.train.engine import train

    train(args)
    return 0


def _eval(args) -> int:
    from pyvision_fast.train.engine import evaluate_checkpoint

    results = evaluate_checkpoint(args)
    if os.environ.get("RANK", "0") == "0":  # under torchrun the metrics are synchronised; rank 0 prints them
        print(json.dumps(results))
        from pyvision_fast.attacks.point_defense import format_robustness_table

        table = format_robustness_table(results)  # PointCAT's attack x defence accuracies, beside the JSON
        if table:
            print(table, file=sys.stderr)
    return 0


def _extract(args) -> int:
    from pyvision_fast.train.extract import run_extract

    print(json.dumps(run_extract(args)))
    return 0


def _edit_video(args) -> int:
    """``pvf edit-video``: pyvision_fast.face3d.edit_video; prints a JSON summary."""
    from pyvision_fast.face3d.edit_video import edit_video, load_editor
    from pyvision_fast.models.expression_editor import emotion_index
    from pyvision_fast.train.config import parse_pairs

    if not args.checkpoint:
        raise ValueError("--checkpoint is required: the expression editor's weights (pvf train talking_face_edit)")
    if not args.bfm:
        raise ValueError("--bfm is required: the BFM front model file BFM_model_front.mat")
    if not 0.0 <= args.intensity <= 1.0:
        raise ValueError(f"--intensity must lie in [0, 1], got {args.intensity}")
    if args.window < 1 or args.window % 2 == 0:
        raise ValueError(f"--window must be an odd number of frames >= 1, got {args.window}")
    editor = load_editor(args.checkpoint, parse_pairs(args.model_arg, "--model-arg"))
    emotion_index(args.emotion, editor.emotions)
    if args.latents and not args.texture_gan:
        raise ValueError("--latents needs --texture-gan (the generator the latents belong to)")
    summary = edit_video(args.input, args.coeffs, args.output, editor=editor, bfm=args.bfm, emotion=args.emotion,
                         intensity=args.intensity, window=args.window, fit_size=args.fit_size,
                         landmarks=args.landmarks, feather=args.feather, texture=args.texture_gan,
                         latents=args.latents, invert_steps=args.invert_steps, chunk=args.chunk,
                         codec=args.codec, codec_options=parse_pairs(args.codec_option, "--codec-option"),
                         progress=False if args.no_progress else None, device=args.device)
    print(json.dumps(summary))
    return 0


def _error_line(exc: BaseException) -> str:
    """One line for a failed command: the message's first line; the exception's class where the message alone
    would not say what went wrong (anything but the input errors every command raises on purpose)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # torch.export colours its messages
    first = text[0] if text else ""
    if isinstance(exc, (ValueError, TypeError, OSError, ImportError)) and first:
        return first + (" ..." if len(text) > 1 else "")
    name = type(exc).__name__
    return f"{name}: {first}" + (" ..." if len(text) > 1 else "") if first else name


def _run(args) -> int:
    """Runs a command. An error ends it with one line on stderr (``pvf CMD: error: ...``) and status 2;
    ``--debug`` (or ``PVF_DEBUG=1``) lets the traceback through instead."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"pvf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line unless --debug
        if args.debug or os.environ.get("PVF_DEBUG", "") not in ("", "0"):
            raise
        print(f"pvf {args.command}: error: {_error_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser = argparse.ArgumentParser(prog="pvf", description="pyvision_fast command line")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = command("info", help="versions, compiled modules, usable backends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_print_info)
    p = command("models", help="registered models with their parameter counts")
    p.add_argument("pattern", nargs="?", help="glob over the names, e.g. 'vit_*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_models)
    from pyvision_fast.train.config import add_eval_args, add_train_args

    p = command("train", help="train a recipe (the same arguments as python -m pyvision_fast.train)")
    add_train_args(p)
    p.set_defaults(func=_train)
    p = command("eval", help="evaluate a checkpoint with a recipe's metrics; prints one JSON object")
    add_eval_args(p)
    p.set_defaults(func=_eval)
    from pyvision_fast.train.extract import add_extract_args

    p = command("extract", help="cache a recipe's frozen-encoder features (paver: Wild360, one file "
                       "per video); prints a JSON summary")
    add_extract_args(p)
    p.set_defaults(func=_extract)
    p = command("bench", help="run the benchmark suite (python -m benchmarks) of a checkout")
    p.add_argument("--root", help="the pyvision_fast checkout (default: current directory)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for python -m benchmarks")
    p.set_defaults(func=_bench)
    p = command("export", help="export a model to ONNX (checked with ONNX Runtime) and optionally TensorRT")
    p.add_argument("model", help="a registered model name (pvf models) or package.module:factory returning an "
                   "nn.Module")
    p.add_argument("--checkpoint", help="registry models: local weights (.safetensors, or .pth read weights_only); "
                   "a pvf train checkpoint also supplies its model arguments")
    p.add_argument("--model-arg", nargs="+", action="extend", metavar="K=V",
                   help="registry models: create_model keyword arguments, e.g. --model-arg num_classes=7")
    p.add_argument("--input", type=_parse_shape, action="append",
                   help="example input shape, e.g. 2x3x224x224 (repeat for several inputs; registry models: default "
                   "from the model)")
    p.add_argument("-o", "--output", default="model.onnx")
    p.add_argument("--static-batch", action="store_true", help="do not make the batch dimension dynamic")
    p.add_argument("--simplify", action="store_true", help="clean the graph up with onnxslim (checked again with "
                   "ONNX Runtime)")
    p.add_argument("--fp16", action="store_true", help="float16 ONNX (float32 inputs/outputs; the float32 graph "
                   "stays beside as <name>.fp32.onnx); with --engine, FP16 kernels")
    p.add_argument("--int8", action="store_true", help="static INT8: a Q/DQ ONNX calibrated on --calib images (the "
                   "form TensorRT 10 and ONNX Runtime both run); with --engine, INT8 kernels")
    p.add_argument("--calib", metavar="DIR", help="--int8: calibration images (any depth), in the model's "
                   "preprocessing")
    p.add_argument("--calib-method", choices=("entropy", "percentile", "minmax"), default="entropy")
    p.add_argument("--calib-limit", type=int, default=512, help="--int8: at most this many calibration images")
    p.add_argument("--calib-eval", metavar="DIR", help="an ImageFolder (<class>/<image>): report top-1 of the "
                   "exported graph (and of the float32 one with --fp16/--int8)")
    p.add_argument("--preprocess", nargs="+", action="extend", metavar="K=V",
                   help="image preprocessing for --calib/--calib-eval: mean=(...) std=(...) crop_pct=F "
                   "interpolation=bicubic (default: the model's data_config, else ImageNet's)")
    p.add_argument("--engine", help="also build a TensorRT engine at this path (metadata beside it as .json)")
    p.add_argument("--max-batch", type=int, default=32, help="TensorRT profile: largest batch")
    p.add_argument("--opt-batch", type=int, default=8, help="TensorRT profile: the batch kernels are tuned for")
    p.add_argument("--workspace", type=int, default=1024, help="TensorRT workspace in MiB")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_export)

    p = command("engine-info", help="what a TensorRT engine built by pvf export takes and gives (no TensorRT "
                       "needed)")
    p.add_argument("engine")
    p.set_defaults(func=_engine_info)
    p = command("edit-video", help="edit a talking-face video's expression toward an emotion (3DMM coefficients "
                "+ expression editor + BFM rendering); prints a JSON summary")
    p.add_argument("--input", required=True, help="the video (MP4 or anything FFmpeg reads)")
    p.add_argument("--coeffs", required=True, help="its per-frame 3DMM coefficients: a (T, 257) .npy, or a "
                   "folder of per-frame .npy / Deep3DFaceRecon .mat files")
    p.add_argument("--emotion", required=True, help="angry, contempt, disgusted, fear, happy, neutral, sad or "
                   "surprised")
    p.add_argument("--intensity", type=float, required=True, help="0 (unchanged) .. 1 (strongest)")
    p.add_argument("--output", required=True, help="the edited MP4")
    p.add_argument("--bfm", help="BFM_model_front.mat (Deep3DFaceRecon's layout)")
    p.add_argument("--checkpoint", help="the expression editor's weights (pvf train talking_face_edit)")
    p.add_argument("--model-arg", nargs="+", action="extend", metavar="K=V",
                   help="expression_editor arguments for weights without pvf train metadata")
    p.add_argument("--window", type=int, default=5, help="frames the edit is averaged over (odd; 1: none)")
    p.add_argument("--fit-size", type=_parse_shape, help="HxW the coefficients were fitted at (default: 224x224 "
                   "crops with --landmarks, else the video's frame size, the render resized to the frames)")
    p.add_argument("--landmarks", help="per-frame 68-point landmarks in frame pixels (a (T, 68, 2) .npy or a "
                   "folder of per-frame .txt): the coefficients are those of aligned face crops; the edited face "
                   "is pasted back")
    p.add_argument("--feather", type=int, default=3, help="crop pixels over which the pasted face fades out")
    p.add_argument("--texture-gan", help="the StyleGAN2 texture generator (pvf train texture_gan "
                   "checkpoint-ema-last.safetensors): also edit the face texture in its W+ space")
    p.add_argument("--latents", help="the frames' W+ texture latents (T, num_ws, w_dim) .npy (pvf extract "
                   "talking_face) instead of inverting the frames")
    p.add_argument("--invert-steps", type=int, default=200, help="Adam steps of the texture inversion")
    p.add_argument("--chunk", type=int, default=16, help="frames rendered at a time")
    p.add_argument("--codec", default="mpeg4", help="PyAV/FFmpeg video codec of the output (mpeg4, libx264 ...)")
    p.add_argument("--codec-option", nargs="+", action="extend", metavar="K=V",
                   help="encoder options, e.g. --codec libx264 --codec-option crf=0 (lossless)")
    p.add_argument("--device", default="cpu", help="torch device of the editing and rendering")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=_edit_video)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if getattr(args, "func", None) is not _bench:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.rest = [*unknown, *args.rest]  # pvf bench --family pointcloud --quick: python -m benchmarks' options
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
