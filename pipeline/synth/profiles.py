"""Named tool profiles: ranges for every imaging step (the domain-shift knobs)."""

from __future__ import annotations

from dataclasses import dataclass

Range = tuple[float, float]


@dataclass(frozen=True)
class ToolProfile:
    """Ranges for one SEM tool + acquisition recipe. Units: nm, output px, or unitless."""

    detector: str = "inlens"          # inlens | side | bse
    edge_gain: Range = (0.4, 1.2)     # a in a*exp(-d/lambda) inside features
    edge_lambda_nm: Range = (1.0, 6.0)
    bloom: Range = (0.05, 0.2)        # weaker brightening outside
    foot: Range = (0.0, 0.15)         # dark foot at the base
    slope_gain: Range = (0.3, 1.0)
    asym: Range = (0.0, 0.1)          # detector asymmetry (shading along one direction)
    invert_p: float = 0.05
    blur_nm: Range = (0.8, 4.0)
    blur_floor_px: Range = (0.35, 0.8)  # output px: beam/pixel integration at low mag
    astig: Range = (0.75, 1.33)
    defocus_p: float = 0.05
    tail: Range = (0.0, 0.08)
    wave: Range = (0.0, 0.06)
    vignette: Range = (0.0, 0.15)
    charging_p: float = 0.1
    charging: Range = (0.05, 0.3)
    vibration_px: Range = (0.0, 0.25)
    drift_px: Range = (0.0, 0.5)
    shifted_lines_p: float = 0.1
    frames: tuple[int, ...] = (1, 2, 4, 8)
    dose: Range = (150.0, 1200.0)      # electrons per pixel per frame at unit yield
    gamma_noise_p: float = 0.0
    read_sigma: Range = (0.0, 0.02)
    row_sigma: Range = (0.0, 0.01)
    gamma: Range = (0.8, 1.25)
    jpeg_p: float = 0.0
    jpeg_quality: Range = (35.0, 90.0)
    resample_p: float = 0.0
    resample: Range = (0.4, 0.8)
    # Nuisance content after acquisition (pipeline.synth.overlays), the same for every class.
    info_bar_p: float = 0.12          # the tool's acquisition band with a scale bar
    scale_bar_p: float = 0.12         # a scale bar drawn into the field
    label_p: float = 0.08             # a panel label from a paper figure
    watermark_p: float = 0.0          # the corner text of generated / stock images
    smooth_p: float = 0.0             # the edge-preserving smoothness of generated images


PROFILES: dict[str, ToolProfile] = {
    "inlens_hires": ToolProfile(blur_nm=(0.8, 2.0), frames=(4, 8, 16), dose=(300, 1500),
                                jpeg_p=0.15, resample_p=0.15),
    "side_detector": ToolProfile(detector="side", asym=(0.25, 0.6), edge_gain=(0.2, 0.6),
                                 slope_gain=(0.5, 1.5), jpeg_p=0.2, resample_p=0.2),
    "cdsem_review": ToolProfile(edge_gain=(0.6, 1.2), edge_lambda_nm=(2.0, 6.0),
                                bloom=(0.1, 0.3), frames=(8, 16), dose=(100, 400),
                                vibration_px=(0.0, 0.15), jpeg_p=0.2, resample_p=0.2),
    "lowmag_inspection": ToolProfile(blur_floor_px=(0.6, 1.2), frames=(1, 2),
                                     dose=(300, 1500), wave=(0.02, 0.1), vignette=(0.05, 0.3),
                                     jpeg_p=0.3, resample_p=0.3),
    "charging_insulator": ToolProfile(charging_p=0.9, charging=(0.15, 0.6), invert_p=0.1,
                                      drift_px=(0.2, 1.5), jpeg_p=0.2, resample_p=0.2),
    "noisy_fast_scan": ToolProfile(frames=(1, 2), dose=(30.0, 150.0), read_sigma=(0.005, 0.02),
                                   row_sigma=(0.005, 0.02), vibration_px=(0.1, 0.4),
                                   shifted_lines_p=0.3, gamma_noise_p=0.5),
    "tem_like_crosssection": ToolProfile(detector="bse", edge_gain=(0.0, 0.15),
                                         bloom=(0.0, 0.05), slope_gain=(0.0, 0.2),
                                         frames=(8, 16), dose=(300, 1500), invert_p=0.2,
                                         tail=(0.05, 0.15), jpeg_p=0.3, resample_p=0.2),
    "legacy_jpeg_resized": ToolProfile(jpeg_p=1.0, jpeg_quality=(20.0, 60.0), resample_p=0.8,
                                       resample=(0.3, 0.6), blur_floor_px=(0.5, 1.0)),
    # Clean crops from papers and vendor pages: sharper, cleaner and more contrasted than a
    # review tool, often with labels and scale bars.
    "crisp_publication": ToolProfile(edge_gain=(0.6, 1.4), edge_lambda_nm=(1.0, 4.0),
                                     blur_nm=(0.5, 1.2), blur_floor_px=(0.2, 0.45),
                                     frames=(16, 32), dose=(800, 3000), gamma=(0.6, 1.6),
                                     charging_p=0.02, vibration_px=(0.0, 0.1),
                                     drift_px=(0.0, 0.2), shifted_lines_p=0.0, jpeg_p=0.3,
                                     jpeg_quality=(60.0, 95.0), resample_p=0.3,
                                     resample=(0.5, 0.9), info_bar_p=0.1, scale_bar_p=0.35,
                                     label_p=0.3),
    # Generated look-alikes: smooth, noiseless, often with a corner watermark.
    "generated_smooth": ToolProfile(blur_nm=(0.8, 2.5), frames=(16, 32), dose=(1000, 3000),
                                    gamma=(0.7, 1.4), smooth_p=0.9, watermark_p=0.6,
                                    info_bar_p=0.05, scale_bar_p=0.05, label_p=0.0,
                                    jpeg_p=0.4, jpeg_quality=(70.0, 95.0)),
    "bse_material": ToolProfile(detector="bse", edge_gain=(0.0, 0.2), slope_gain=(0.0, 0.3),
                                bloom=(0.0, 0.05), foot=(0.0, 0.05), frames=(2, 4),
                                dose=(100, 400), invert_p=0.1),
    "defocused_old_tool": ToolProfile(detector="side", asym=(0.1, 0.3), defocus_p=0.6,
                                      blur_floor_px=(0.7, 1.4), astig=(0.6, 1.6),
                                      tail=(0.05, 0.2), wave=(0.03, 0.1), frames=(1, 2, 4),
                                      jpeg_p=0.5, resample_p=0.3),
}

DEFAULT_HELDOUT_PROFILES: tuple[str, ...] = ("bse_material", "defocused_old_tool")
