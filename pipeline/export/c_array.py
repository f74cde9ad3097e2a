"""A .tflite file as a C++ array, in the form of the TFLite Micro examples."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.files import write_text

_BYTES_PER_LINE = 12
_SYMBOL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def write_c_array(tflite_path: Path, cc_path: Path, h_path: Path, symbol: str = "g_model",
                  declarations: str = "") -> None:
    """Write `<symbol>[]` (16-byte aligned, as TFLM requires) and `<symbol>_len`.

    `declarations`: more C++ for the header (e.g. output_code.c_decoder's functions).
    The .cc includes the header by file name, so keep both in the same directory.
    """
    if not _SYMBOL_RE.fullmatch(symbol):
        raise ValueError(f"not a C identifier: {symbol!r}")
    data = Path(tflite_path).read_bytes()
    h_path, cc_path = Path(h_path), Path(cc_path)
    guard = re.sub(r"\W", "_", h_path.name).upper() + "_"
    source = f"generated from {Path(tflite_path).name} ({len(data)} bytes); do not edit"
    extra = declarations + "\n" if declarations else ""
    write_text(h_path, f"// {source}\n#ifndef {guard}\n#define {guard}\n\n"
                       f"extern const unsigned char {symbol}[];\n"
                       f"extern const int {symbol}_len;\n\n{extra}#endif  // {guard}\n")
    rows = (", ".join(f"0x{b:02x}" for b in data[i: i + _BYTES_PER_LINE])
            for i in range(0, len(data), _BYTES_PER_LINE))
    body = ",\n    ".join(rows)
    write_text(cc_path, f"// {source}\n#include \"{h_path.name}\"\n\n"
                        f"alignas(16) const unsigned char {symbol}[] = {{\n    {body}\n}};\n"
                        f"const int {symbol}_len = {len(data)};\n")
