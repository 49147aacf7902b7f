"""Concrete nodes run by the launcher (each a thin shell around pure logic)."""
