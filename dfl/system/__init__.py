"""Simulated time: the system model (devices, links), the host clock, round deadlines."""
