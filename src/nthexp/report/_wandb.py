"""wandb sink: one run per sweep point, one analysis run per sweep.

A logging failure never fails a computation: every call is wrapped, warns, and falls
back from the asked mode to ``"offline"`` and then ``"disabled"``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_FALLBACK = ("offline", "disabled")


def _settings():
    import wandb

    # console="off": the app's logging already goes to the job's log file; no system
    # monitor or requirements dump keeps a point's wandb overhead small.
    return wandb.Settings(
        silent=True,
        console="off",
        x_disable_stats=True,
        x_disable_machine_info=True,
        x_save_requirements=False,
        disable_git=True,
        save_code=False,
    )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


def _with_fallback(mode: str, body) -> str | None:
    """Run ``body(mode)`` for the asked mode, then the fallbacks; returns the mode
    used."""
    modes = [mode] + [m for m in _FALLBACK if m != mode]
    for m in modes:
        try:
            body(m)
            return m
        except Exception as exc:  # noqa: BLE001 - a sink must never kill the run
            log.warning(
                "wandb logging in mode %r failed (%s: %s)", m, type(exc).__name__, exc
            )
            _finish_quietly()
    log.warning("wandb logging gave up; the results on disk are complete")
    return None


def _finish_quietly() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1)
    except Exception:  # noqa: BLE001
        pass


def _logged(mode: str, write, **init) -> str | None:
    """One wandb run, ``wandb.init(mode=..., **init)``, filled by ``write(run,
    wandb)`` and finished, with the fallbacks of :func:`_with_fallback`; returns the
    mode used."""
    if mode == "disabled":
        return "disabled"

    def body(m: str) -> None:
        import wandb

        run = wandb.init(mode=m, reinit="finish_previous", settings=_settings(), **init)
        try:
            write(run, wandb)
        finally:
            run.finish()

    return _with_fallback(mode, body)


def log_point(
    *,
    mode: str,
    project: str,
    run_dir: Path,
    group: str | None,
    name: str,
    config: dict,
    metrics: dict,
    spectra: dict[str, np.ndarray] | None,
    tags: list[str] | None = None,
) -> str | None:
    """Log one sweep point (config, metrics as summary, eigenvalue table/histograms)."""

    def write(run, wandb) -> None:
        run.summary.update(_flatten(metrics))
        if spectra is None:
            return
        emp, inf = spectra["emp"], spectra["inf"]
        table = wandb.Table(
            columns=["index", "emp", "inf"],
            data=[
                [i, float(a), float(b)]
                for i, (a, b) in enumerate(zip(emp, inf, strict=True))
            ],
        )
        run.log(
            {
                "spectra/eigenvalues": table,
                "spectra/log10_emp": wandb.Histogram(_log10_positive(emp)),
                "spectra/log10_inf": wandb.Histogram(_log10_positive(inf)),
            }
        )

    return _logged(
        mode,
        write,
        project=project,
        dir=str(run_dir),
        group=group,
        job_type="point",
        name=name,
        config=config,
        tags=tags,
    )


def log_sweep(
    *,
    mode: str,
    project: str,
    sweep_dir: Path,
    group: str,
    fits: dict,
    figures: list[Path],
) -> str | None:
    """One analysis run per sweep: fitted exponents as summary, figures as images."""

    def write(run, wandb) -> None:
        from nthexp.report._scaling import study_tables

        run.summary.update(_fit_summary(fits))
        run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures})
        tables = study_tables(fits)
        if tables:
            run.log(
                {
                    f"tables/{k}": wandb.Table(dataframe=v.astype(object))
                    for k, v in tables.items()
                }
            )

    return _logged(
        mode,
        write,
        project=project,
        dir=str(sweep_dir),
        group=group,
        job_type="analysis",
        name=f"{group}-analysis",
    )


def _fit_summary(fits: dict) -> dict:
    out = {}
    for entry in fits.get("width_fits", []):
        for which in ("all", "small_ratio"):
            fit = entry.get(which)
            if fit is not None and "exponents" in fit:
                out[f"width_exponent/depth={entry['depth']}/{which}"] = fit[
                    "exponents"
                ]["width"]
    for entry in fits.get("depth_fits", []):
        fit = entry.get("fit")
        if fit is not None and "exponents" in fit:
            out[f"depth_exponent/width={entry['width']}"] = fit["exponents"]["depth"]
    joint = fits.get("joint")
    if joint is not None and "exponents" in joint:
        for factor, value in joint["exponents"].items():
            out[f"joint_exponent/{factor}"] = value
    law = (fits.get("scaling_law") or {}).get("fit") or {}
    for factor, value in law.get("exponents", {}).items():
        out[f"scaling_law/{factor}"] = value
    if fits.get("weyl"):
        out["weyl/violations"] = fits["weyl"]["violations"]
    return out


def _log10_positive(ev: np.ndarray) -> np.ndarray:
    ev = np.asarray(ev, dtype=np.float64)
    pos = ev[ev > 0]
    return np.log10(pos) if pos.size else np.zeros(1)
