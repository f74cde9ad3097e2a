"""The edge report (flash, RAM, MACs, latency) and the export manifest (file hashes)."""

from __future__ import annotations

from pathlib import Path

from pipeline.files import sha256_file

# NXP i.MX RT1170: 2 MB on-chip SRAM (all banks, incl. the M7's TCM); Cortex-M7 at 1 GHz.
SRAM_BYTES = 2 * 1024 * 1024
M7_HZ = 1.0e9
# CMSIS-NN int8 kernels sustain roughly 0.5-1 MAC per cycle on a Cortex-M7 (dual-issue,
# 2-way SIMD SMLAD, minus memory stalls); 0.5 is the planning figure, 1.0 the best case.
MACS_PER_CYCLE = 0.5
MACS_PER_CYCLE_BEST = 1.0


def edge_report(tflite_int8: Path, arena_bytes: int, macs: int, activations: str = "int8"
                ) -> dict:
    """Edge Impulse-style resource summary for the int8 model on an i.MX RT1170.

    activations="int16" (a 16x8 model): the Cortex-M7 estimate is left out, since the
    int8 MAC rate it assumes does not hold for CMSIS-NN's 16-bit kernels.

    flash_bytes is the model file alone (the TFLM runtime's code, typically 50-100 KB with
    only the needed kernels, is not included). RAM is the TFLM tensor arena (measured with
    the TFLM interpreter), plus the model itself when it is copied into SRAM. Host latency is
    measured elsewhere (Delivery.host_latency): a timing would make the manifest differ on
    every run.
    """
    model_bytes = Path(tflite_int8).stat().st_size
    return {
        "flash_bytes": model_bytes,
        "flash_note": "model flatbuffer only; add the TFLM runtime code (~50-100 KB)",
        "arena_bytes": int(arena_bytes),
        "ram_total_bytes": int(arena_bytes),
        "ram_total_model_in_sram_bytes": int(arena_bytes) + model_bytes,
        "macs": int(macs),
        **(_m7_estimate(macs) if activations == "int8" else
           {"m7_assumption": "no estimate: 16-bit activations run CMSIS-NN's s16 kernels, "
                             "slower than the int8 rate the int8 estimate uses"}),
        "sram_budget_bytes": SRAM_BYTES,
        "fits_sram_model_in_flash": arena_bytes <= SRAM_BYTES,
        "fits_sram_model_in_sram": arena_bytes + model_bytes <= SRAM_BYTES,
    }


def _m7_estimate(macs: int) -> dict:
    return {
        "m7_latency_ms_estimate": macs / (MACS_PER_CYCLE * M7_HZ) * 1e3,
        "m7_latency_ms_best_case": macs / (MACS_PER_CYCLE_BEST * M7_HZ) * 1e3,
        "m7_assumption": f"Cortex-M7 @ {M7_HZ / 1e9:g} GHz, CMSIS-NN int8 at {MACS_PER_CYCLE} "
                         f"MAC/cycle (best case {MACS_PER_CYCLE_BEST}); conv/linear MACs only",
    }


def build_manifest(files: list[Path], **fields: object) -> dict:
    """{"files": {name: {"sha256", "bytes"}}, **fields}; write it with files.write_json.

    Files are keyed by name (not path) so the manifest is the same on every machine.
    """
    entries: dict[str, dict] = {}
    for path in map(Path, files):
        if path.name in entries:
            raise ValueError(f"two manifest files are named {path.name}")
        entries[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if "files" in fields:
        raise ValueError("'files' is reserved for the file hashes")
    return {"files": entries, **fields}
