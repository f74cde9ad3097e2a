"""Edge export: ONNX fp32/int8, TFLite int8, the TFLite Micro check, C arrays and manifests.

Submodules are imported directly (`pipeline.export.tflite`, ...): the TFLite and TFLM ones
need the export toolchain (TensorFlow, onnx2tf, tflite-micro), the rest do not.
"""
