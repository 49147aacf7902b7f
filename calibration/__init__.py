"""Calibration: intrinsics check, hand-eye, latency calibration."""
