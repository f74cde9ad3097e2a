"""Line-edge roughness by the FFT method with a stretched-exponential autocorrelation."""

from __future__ import annotations

import numpy as np


def _next_pow2(n: int) -> int:
    return 1 << int(np.ceil(np.log2(max(n, 2))))


def acf_psd(n: int, sigma: float, xi: float, alpha: float) -> np.ndarray:
    """rFFT power spectrum of the circular ACF sigma^2 exp(-(|r|/xi)^(2 alpha)) on n samples."""
    lag = np.minimum(np.arange(n), n - np.arange(n)).astype(np.float64)
    acf = sigma**2 * np.exp(-((lag / max(xi, 1e-6)) ** (2.0 * alpha)))
    return np.clip(np.fft.rfft(acf).real, 0.0, None)


def rough_edges(
    rng: np.random.Generator,
    n_edges: int,
    length: int,
    sigma: float,
    xi: float,
    alpha: float,
    domain_factor: int = 8,
) -> np.ndarray:
    """(n_edges, length) float32 edge displacements (px) with the given ACF.

    Generated on a periodic domain >= domain_factor x the visible length and cropped, because a
    short periodic domain removes the long wavelengths and biases the variance low.
    """
    n = _next_pow2(max(domain_factor * length, int(16 * xi)))
    psd = acf_psd(n, sigma, xi, alpha)
    white = rng.standard_normal((n_edges, n))
    # var(x) = sum(h^2) = mean(psd) = acf(0) = sigma^2 for unit white noise.
    x = np.fft.irfft(np.fft.rfft(white, axis=1) * np.sqrt(psd), n=n, axis=1)
    start = int(rng.integers(0, n - length + 1))
    return x[:, start : start + length].astype(np.float32)


def paired_edges(
    rng: np.random.Generator,
    n_lines: int,
    length: int,
    sigma: float,
    xi: float,
    alpha: float,
    rho: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Left/right edge displacements of n_lines lines with edge-pair correlation rho."""
    e = rough_edges(rng, 2 * n_lines, length, sigma, xi, alpha)
    left = e[:n_lines]
    right = rho * left + np.sqrt(max(1.0 - rho**2, 0.0)) * e[n_lines:]
    return left, right.astype(np.float32)
