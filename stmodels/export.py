"""Deployment: a model as a ``torch.export`` program and an AOTInductor package (CPU).

``torch.export`` captures the model's forward pass as one graph, with the ``torch.ops.stmodels.*``
kernels as operators; AOTInductor compiles that graph into a shared library packaged in a ``.pt2``
file that runs without Python model code. Both need the operators registered when they are loaded:
``import stmodels`` (the loaders below do) in a process where the extension loads (see
``python -m stmodels.info``). See docs/deploy.rst.

Example::

    from stmodels.export import export_model, load_aoti
    paths = export_model(model, torch.rand(1, *model.config.in_shape), "diffuma.pt2")
    runner = load_aoti(paths["aoti"])
    Y_hat = runner(X)            # X: (1, T_in, C, H, W) -> (1, T_out, C, H, W)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_model", "export_run", "load_exported", "load_aoti", "aoti_path_for"]


def aoti_path_for(out: str | os.PathLike) -> Path:
    """Where the AOTInductor package of the program ``out`` goes: ``model.pt2`` -> ``model.aoti.pt2``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".pt2") + ".aoti.pt2")


def _check_free(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)


def export_model(model: nn.Module, example_inputs: torch.Tensor, out: str | os.PathLike, *, aoti: bool = True,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write ``model``'s forward pass as a ``torch.export`` program (and an AOTInductor package).

    Args:
        model: a module whose ``model(X)`` predicts; exported in eval mode on the CPU.
        example_inputs: ``X``, (batch, T_in, C, H, W); the program is traced for this shape.
        out: the program's file (``.pt2``).
        aoti: also compile the AOTInductor package to :func:`aoti_path_for` ``(out)`` (C++
            compile: tens of seconds to minutes).
        overwrite: replace existing files instead of raising FileExistsError.

    Returns:
        ``{"exported": out}``, plus ``"aoti"`` with ``aoti=True``. Files are written atomically.
    """
    out = Path(out)
    targets = {"exported": out} | ({"aoti": aoti_path_for(out)} if aoti else {})
    for path in targets.values():
        _check_free(path, overwrite)
    was_training = model.training
    model = model.eval().cpu()
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example_inputs.cpu(),), strict=False)
    finally:
        model.train(was_training)
    partial = out.with_name(out.name + ".partial")
    torch.export.save(program, str(partial))
    os.replace(partial, out)
    if aoti:
        from torch._inductor import aoti_compile_and_package

        package = targets["aoti"]
        partial = package.with_name(package.name + ".partial.pt2")
        aoti_compile_and_package(program, package_path=str(partial))
        os.replace(partial, package)
    return targets


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, checkpoint: str = "best", batch_size: int = 1,
               aoti: bool = True, overwrite: bool = False) -> dict[str, Path]:
    """:func:`export_model` for a run folder's model (``stmodels export --run RUN --out FILE``)."""
    from stmodels.train.runs import load_run

    if batch_size < 1:
        raise ValueError(f"export: batch_size must be >= 1, got {batch_size}")
    model, _ = load_run(run_dir, checkpoint, "cpu")
    example = torch.rand(batch_size, *model.config.in_shape, generator=torch.Generator().manual_seed(0))
    return export_model(model, example, out, aoti=aoti, overwrite=overwrite)


def load_exported(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """Load a program written by :func:`export_model`; ``load_exported(p).module()(X)`` runs it."""
    import stmodels  # noqa: F401  (registers the torch.ops.stmodels operators the program calls)

    return torch.export.load(str(path))


def load_aoti(path: str | os.PathLike):
    """Load an AOTInductor package written by :func:`export_model`; returns a callable ``runner(X)``."""
    import stmodels  # noqa: F401  (registers the operators the compiled library calls)
    from torch._inductor import aoti_load_package

    return aoti_load_package(str(path))
