"""Backends realise a precision plan as a runnable candidate (ONNX Runtime on the CPU here)."""
