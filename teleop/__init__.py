"""Teleoperation devices and scripted experts."""
