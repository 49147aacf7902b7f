"""What the serial servo buses (Dynamixel, Feetech) have in common."""


class ServoBusError(RuntimeError):
    """A servo bus or one of its servos failed (the message names which and why)."""
